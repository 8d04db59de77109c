"""Twelve kinds of damage to a run's newest checkpoint: every reader and the rerun survive.

A short real training (steps 2, 4, 6 kept) is copied once per kind and its
step 6 damaged. Then, on each copy:
  - `checkpointing.load_inference_checkpoint` (predict, evaluate, export) loads
    the newest step whose parameters restore and match their checksums,
    reporting the damaged step in one line;
  - rerunning the training sets step 6 aside, resumes from step 4, and saves
    a step 6 bit-identical to the undamaged one (so it resumed exactly).
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mdiqa_jax import checkpointing
from mdiqa_jax import evaluate
from mdiqa_jax import predict
from mdiqa_jax.inference.checkpoint import load_checkpoint

import real_layout_config
from child_process import REPO_DIR, TESTS_DIR, child_env

RELIABILITY_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = os.path.join(RELIABILITY_DIR, 'real_layout_config.py')
RESUME_WORKER = os.path.join(RELIABILITY_DIR, 'resume_worker.py')
DAMAGED, PREVIOUS = 6, 4


def _data_files(step_dir):
  return sorted(glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_*', 'd', '*')))


def _each_data_file(change):
  def damage(step_dir):
    files = _data_files(step_dir)
    assert files, step_dir
    for path in files:
      with open(path, 'rb') as f:
        data = bytearray(f.read())
      with open(path, 'wb') as f:
        f.write(change(data))
  return damage


def _flip_one_bit(data):
  data[len(data) // 2] ^= 0x08
  return bytes(data)


def _remove(relative):
  def damage(step_dir):
    path = os.path.join(step_dir, relative)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)  # pylint: disable=expression-not-assigned
  return damage


def _garble(relative_glob):
  def damage(step_dir):
    paths = [p for p in glob.glob(os.path.join(step_dir, relative_glob))
             if os.path.isfile(p) and not p.endswith('commit_success.txt')]
    assert paths, relative_glob
    for path in paths:
      with open(path, 'w', encoding='utf-8') as f:
        f.write('{"garbage": ')
  return damage


def _delete_data_files(step_dir):
  for path in _data_files(step_dir):
    os.remove(path)


# kind: (damage, step the readers load). The iterator state is training's only,
# so readers still load step 6 without it. A flipped bit may fall in arrays
# that readers do not load (the optimiser state): None = the step whose
# parameters Orbax alone restores equal to the undamaged run's.
DAMAGE = {
    # The parameters can lie wholly in the first halves of the OCDBT data files
    # (the layout varies with the order of the asynchronous writes); readers,
    # which restore only the parameters and check their checksums, then rightly
    # load the damaged step. Resuming, which needs the whole state, never can.
    'data files cut in half': (_each_data_file(lambda d: bytes(d[:len(d) // 2])), None),
    'data files zeroed': (_each_data_file(lambda d: bytes(len(d))), PREVIOUS),
    'data files overwritten with random bytes': (_each_data_file(
        lambda d: np.random.default_rng(len(d)).bytes(len(d))), PREVIOUS),
    'one bit flipped in each data file': (_each_data_file(_flip_one_bit), None),
    'data files deleted': (_delete_data_files, PREVIOUS),
    'state/_METADATA deleted': (_remove(os.path.join('state', '_METADATA')), PREVIOUS),
    'state/manifest.ocdbt deleted': (_remove(os.path.join('state', 'manifest.ocdbt')), PREVIOUS),
    'state/ deleted': (_remove('state'), PREVIOUS),
    'iterator state deleted': (_remove('data'), DAMAGED),
    'iterator state garbled': (_garble(os.path.join('data', '*')), DAMAGED),
    'metrics/metrics garbled': (_garble(os.path.join('metrics', 'metrics')), PREVIOUS),
    'checksums garbled': (_garble(os.path.join('checksums', '*')), PREVIOUS),
}


def _train(real_layout_data_dir, compilation_cache, workdir):
  """The undamaged short run (steps 2, 4, 6)."""
  completed = subprocess.run(
      [sys.executable, '-m', 'mdiqa_jax.train', f'--config={CONFIG_FILE}:{real_layout_data_dir}',
       f'--workdir={workdir}', *real_layout_config.flags(real_layout_config.SHORT_RUN)],
      env=_env(compilation_cache), capture_output=True, text=True, timeout=600, cwd=REPO_DIR,
      check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  assert checkpointing.list_steps(workdir) == [2, 4, 6]
  return workdir


def _env(compilation_cache):
  env = child_env(compilation_cache)
  env['PYTHONPATH'] = os.pathsep.join([RELIABILITY_DIR, TESTS_DIR, env['PYTHONPATH']])
  return env


def _damaged_copies(trained, root):
  """{kind: copy of the run with step 6 damaged that way}."""
  copies = {}
  for index, (kind, (damage, _)) in enumerate(DAMAGE.items()):
    copy = str(root / f'kind{index:02d}')
    shutil.copytree(trained, copy)
    damage(os.path.join(copy, 'checkpoints', str(DAMAGED)))
    copies[kind] = copy
  return copies


def _params(path):
  return jax.tree_util.tree_leaves(load_checkpoint(path)[1])


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _params_intact(trained, copy, step):
  """Orbax's own restore of a step's state (no checksums) has the undamaged
  parameters? (False where it cannot restore the whole state.)"""
  def raw(workdir):
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      return jax.tree_util.tree_leaves(checkpointer.restore(
          os.path.join(workdir, 'checkpoints', str(step), 'state'))['params'])
    finally:
      checkpointer.close()
  try:
    return _same(raw(copy), raw(trained))
  except Exception:  # pylint: disable=broad-except  (Orbax fails on what it cannot read)
    return False


def _readers_load_the_newest_intact_step_and_name_the_damaged_one(trained, damaged):
  expected = {step: _params(os.path.join(trained, 'checkpoints', str(step)))
              for step in (PREVIOUS, DAMAGED)}
  assert not _same(expected[PREVIOUS], expected[DAMAGED])
  survived = 0
  for kind, copy in damaged.items():
    step = DAMAGE[kind][1]
    loaded = checkpointing.load_inference_checkpoint(copy)
    if step is None:
      # Orbax restores the whole state (optimiser included), readers only the
      # parameters: when Orbax can, readers must load the damaged step; when it
      # cannot, the parameters may still be whole, and loading the step is then
      # right exactly when they equal the undamaged run's (checked below).
      step = (DAMAGED if _params_intact(trained, copy, DAMAGED) or loaded.step == DAMAGED
              else PREVIOUS)
    assert loaded.step == step, kind
    assert _same(jax.tree_util.tree_leaves(loaded.params), expected[step]), kind
    if step == PREVIOUS:
      (line,) = loaded.skipped
      assert line.startswith(f'step {DAMAGED}: ') and '\n' not in line, (kind, line)
      # The damaged step named explicitly is refused in one line, not replaced
      # (its metrics only rank the steps of a workdir).
      step_dir = os.path.join(copy, 'checkpoints', str(DAMAGED))
      if kind == 'metrics/metrics garbled':
        assert _same(_params(step_dir), expected[DAMAGED])
      else:
        with pytest.raises(checkpointing.CheckpointError) as error:
          checkpointing.load_inference_checkpoint(step_dir)
        assert str(error.value).startswith(f'{step_dir}: ') and '\n' not in str(error.value)
    assert checkpointing.list_steps(copy) == [2, 4, 6]  # Readers move nothing.
    survived += 1
  print(f'readers: {survived} of {len(DAMAGE)} damage kinds load the newest intact step')


def _predict_and_evaluate_use_the_newest_intact_step(damaged, tmp_path, capsys):
  tmp_path.mkdir()
  copy = damaged['data files zeroed']
  slice_path = tmp_path / 'slice.npy'
  np.save(slice_path, np.random.default_rng(0).uniform(0.2, 0.8, (64, 64)).astype(np.float32))
  status = predict.predict_command(predict.Options(
      checkpoint=copy, inputs=[str(slice_path)], output=str(tmp_path / 'out.csv'),
      progress=False))
  assert status == 0
  metrics = evaluate.evaluate_checkpoint(copy, 'test', output_dir=str(tmp_path / 'report'),
                                         show_progress=False)
  report = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
  assert report['checkpoint'] == os.path.join(copy, 'checkpoints', str(PREVIOUS))
  assert report['srocc'] == pytest.approx(metrics['srocc'])
  step_dir = os.path.join(copy, 'checkpoints', str(DAMAGED))
  status = predict.predict_command(predict.Options(
      checkpoint=step_dir, inputs=[str(slice_path)], output=str(tmp_path / 'named.csv'),
      progress=False))
  assert status == predict.EXIT_FATAL
  (line,) = [l for l in capsys.readouterr().err.splitlines() if 'mdiqa-predict: error' in l]
  assert f'{step_dir}: ' in line and 'cannot be read' in line


def _a_rerun_resumes_from_the_newest_intact_step_in_every_kind(
    trained, damaged, real_layout_data_dir, compilation_cache):
  completed = subprocess.run(
      [sys.executable, RESUME_WORKER, real_layout_data_dir, *damaged.values()],
      env=_env(compilation_cache), capture_output=True, text=True, timeout=900, cwd=REPO_DIR,
      check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  outcomes = {o['workdir']: o for o in map(json.loads, completed.stdout.splitlines())}
  logs = dict(part.split('\n', 1) for part in completed.stderr.split('=== ')[1:])
  undamaged = _params(os.path.join(trained, 'checkpoints', str(DAMAGED)))
  resumed = 0
  for kind, copy in damaged.items():
    assert outcomes[copy]['error'] is None, (kind, outcomes[copy]['error'])
    assert outcomes[copy]['step'] == DAMAGED, kind
    log = logs[copy]
    (reported,) = [l for l in log.splitlines() if 'does not restore' in l]
    assert f'Checkpoint step {DAMAGED} does not restore (' in reported, (kind, reported)
    assert f'Resumed from {copy} at step {PREVIOUS}.' in log, kind
    assert os.listdir(os.path.join(copy, checkpointing.DAMAGED_DIR)) == [str(DAMAGED)]
    # Resumed from step 4 exactly: the step 6 it saved again is the undamaged one.
    assert checkpointing.list_steps(copy) == [2, 4, 6], kind
    assert _same(_params(os.path.join(copy, 'checkpoints', str(DAMAGED))), undamaged), kind
    resumed += 1
  print(f'training: {resumed} of {len(DAMAGE)} damage kinds resume from the newest intact step')


def test_twelve_kinds_of_damage_readers_and_reruns_use_the_newest_intact_step(
    real_layout_data_dir, compilation_cache, tmp_path, capsys):
  # One test, so that the parts run in this order on one copy of each kind
  # (the rerun sets the damaged steps aside) and the run is trained once.
  trained = _train(real_layout_data_dir, compilation_cache, str(tmp_path / 'run'))
  damaged = _damaged_copies(trained, tmp_path / 'damaged')
  _readers_load_the_newest_intact_step_and_name_the_damaged_one(trained, damaged)
  _predict_and_evaluate_use_the_newest_intact_step(damaged, tmp_path / 'predict', capsys)
  _a_rerun_resumes_from_the_newest_intact_step_in_every_kind(
      trained, damaged, real_layout_data_dir, compilation_cache)
