"""Every bad input a clean row: the corpus of `bad_inputs`, read and scored.

Reading runs in a child process under a 2 GiB address-space limit, with a
time limit on every step, so a reader that allocates what a header declares
fails with MemoryError and a reader that hangs (a FIFO opened while walking)
is killed and named; then mdiqa-predict scores the whole corpus in one call.
"""
import json
import os
import selectors
import subprocess
import sys
import time

import pytest

from mdiqa_jax import predict

import bad_inputs
from child_process import REPO_DIR, child_env

READ_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'read_worker.py')
MEMORY_LIMIT_BYTES = 2 * 1024 ** 3
# Limits that only a hang reaches (a loaded 2-core CI machine reads a case in
# well under a second); the walk includes the child's imports.
WALK_LIMIT_S, CASE_LIMIT_S = 180, 60


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('bad_inputs'))
  return root, bad_inputs.write_corpus(root)


def _inputs(corpus):
  root, cases = corpus
  return [os.path.join(root, 'corpus')] + [case.path for case in cases if case.named]


def _read_in_child(paths, stderr_path):
  """The worker's events; fails naming the step that passed its time limit."""
  with open(stderr_path, 'w', encoding='utf-8') as stderr:
    process = subprocess.Popen(
        [sys.executable, READ_WORKER, str(MEMORY_LIMIT_BYTES), *paths], cwd=REPO_DIR,
        env=child_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
  events, waiting_for = [], 'the walk of the inputs'
  selector = selectors.DefaultSelector()
  selector.register(process.stdout, selectors.EVENT_READ)
  deadline = time.monotonic() + WALK_LIMIT_S
  try:
    while True:
      if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
        pytest.fail(f'no progress within its time limit while reading {waiting_for}')
      line = process.stdout.readline()
      if not line:
        break
      event = json.loads(line)
      events.append(event)
      waiting_for = event.get('path', waiting_for) if event['event'] == 'start' else (
          'the next file')
      deadline = time.monotonic() + CASE_LIMIT_S
    assert process.wait(timeout=CASE_LIMIT_S) == 0, open(stderr_path).read()[-3000:]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return events


@pytest.fixture(scope='module')
def read_events(corpus, tmp_path_factory):
  return _read_in_child(_inputs(corpus), str(tmp_path_factory.mktemp('worker') / 'stderr'))


def test_every_file_is_read_or_refused_in_time_under_2_gib(corpus, read_events):
  _, cases = corpus
  walked = read_events[0]
  assert walked['event'] == 'walked'
  outcomes = {e['path']: e for e in read_events[1:] if e['event'] != 'start'}
  crashed = {path: e['error'] for path, e in outcomes.items() if e['event'] == 'crashed'}
  assert not crashed, crashed
  # Every walked file was finished (read or refused), none was left hanging.
  assert sorted(outcomes) == sorted(walked['files'])
  # Each case was read, refused, or refused while listing (a DICOM header that
  # does not parse, a path that is no regular file).
  for case in cases:
    if case.named:
      assert case.error in walked['failures'][case.path], case.name
    else:
      assert case.path in outcomes or case.path in walked['failures'], (
          f'{case.name}: not found by walking the corpus')
  # What the walk must not open: FIFOs, a broken link, a link back to the folder.
  folders = os.path.join(corpus[0], 'corpus', 'folders')
  assert not [path for path in walked['files'] if path.startswith(folders) and (
      'fifo' in path or 'broken_link' in path or f'{os.sep}loop{os.sep}' in path)]
  hidden = [path for path in walked['files'] if f'{os.sep}.hidden{os.sep}' in path]
  assert not hidden


def test_predict_scores_the_good_files_and_gives_every_bad_one_a_clean_row(
    corpus, read_events, tiny_checkpoint, tmp_path, capsys):
  del read_events  # Reading passed its time and memory limits: safe to do here.
  _, cases = corpus
  output = tmp_path / 'scores.json'
  status = predict.predict_command(predict.Options(
      checkpoint=tiny_checkpoint.workdir, inputs=_inputs(corpus), output=str(output),
      progress=False))
  stderr = capsys.readouterr().err
  assert status == predict.EXIT_SOME_FAILED
  assert 'Traceback' not in stderr
  result = json.loads(output.read_text())
  scored, failed = {}, {}
  for row in result['slices']:
    scored.setdefault(row['file'], []).append(row)
  for row in result['failures']:
    failed.setdefault(row['file'], []).append(row['error'])
  problems = []
  for case in cases:
    rows, errors = scored.get(case.path, []), failed.get(case.path, [])
    if case.error is not None:
      if rows or len(errors) != 1 or case.error not in errors[0]:
        problems.append(f'{case.name}: expected one error with {case.error!r}, got '
                        f'{len(rows)} scored rows and errors {errors}')
      continue
    if errors or len(rows) != case.slices:
      problems.append(f'{case.name}: expected {case.slices} scored slices, got {len(rows)} '
                      f'and errors {errors}')
    elif not all(0.0 <= row['score'] <= 4.0 and row['uncertainty'] > 0 for row in rows):
      problems.append(f'{case.name}: scores out of range: {rows}')
    elif case.note is not None and not all(case.note in row['note'] for row in rows):
      problems.append(f'{case.name}: note {[row["note"] for row in rows]} lacks {case.note!r}')
  assert not problems, '\n'.join(problems)
  # Nothing else was scored or refused; each failure is one line on stderr.
  assert set(scored) == {case.path for case in cases if case.error is None}
  assert set(failed) == {case.path for case in cases if case.error is not None}
  failure_lines = [line for line in stderr.splitlines() if line.startswith('mdiqa-predict: failed: ')]
  assert len(failure_lines) == len(result['failures'])
  num_bad = sum(case.error is not None for case in cases)
  print(f'corpus: {len(cases)} cases, {len(cases) - num_bad} scored '
        f'({len(result["slices"])} slices), {num_bad} refused with a clean row')
  assert len(cases) >= 60 and num_bad >= 40


def test_a_path_without_input_files_exits_2_with_a_message(tiny_checkpoint, tmp_path, capsys):
  empty = tmp_path / 'empty'
  empty.mkdir()
  nothing_readable = tmp_path / 'nothing_readable'
  nothing_readable.mkdir()
  (nothing_readable / 'notes.txt').write_text('no images here')
  os.mkfifo(nothing_readable / 'pipe.dcm')
  for folder in (empty, nothing_readable):
    status = predict.predict_command(predict.Options(
        checkpoint=tiny_checkpoint.workdir, inputs=[str(folder)],
        output=str(tmp_path / f'{folder.name}.csv'), progress=False))
    assert status == predict.EXIT_SOME_FAILED
    assert f'mdiqa-predict: error: no input file found in {folder}' in capsys.readouterr().err
    assert not (tmp_path / f'{folder.name}.csv').exists()
