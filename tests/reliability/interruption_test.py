"""One writer per workdir, kill -9 at a random point, SIGTERM in the final evaluation.

One interrupted sequence of real trainings, compared with an uninterrupted
run of the same config:
  1. run A trains; while it holds the workdir (frozen with SIGSTOP so that it
     cannot finish meanwhile), a second training on the same workdir must stop
     at once with a one-line error naming A; then A is killed with SIGKILL at a
     seeded random point (a random saved step, then a random delay: in a step,
     an asynchronous save or a validation);
  2. run B starts (the kernel released A's lock), resumes, and gets SIGTERM
     during the final test evaluation: exit status 0, no report written;
  3. run C finishes: its last step and its test report equal the
     uninterrupted run's, bit for bit.
(tests/checkpointing_test.py kills another run at a fixed point.)
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from mdiqa_jax import checkpointing
from mdiqa_jax.inference.checkpoint import load_checkpoint

import real_layout_config
from child_process import REPO_DIR, TESTS_DIR, child_env

RELIABILITY_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = os.path.join(RELIABILITY_DIR, 'real_layout_config.py')
RUN = {'num_train_steps': 60, 'checkpoint_every_steps': 5, 'keep_checkpoints': 2,
       'keep_best': 1, 'eval_every_steps': 30, 'log_every_steps': 5}
# Only a hang waits this long (a run takes seconds once compiled).
LIMIT_S = 600


def _command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'mdiqa_jax.train', f'--config={CONFIG_FILE}:{data_dir}',
          f'--workdir={workdir}', *real_layout_config.flags(RUN), *extra]


def _env(compilation_cache):
  env = child_env(compilation_cache)
  env['PYTHONPATH'] = os.pathsep.join([RELIABILITY_DIR, TESTS_DIR, env['PYTHONPATH']])
  return env


def _wait_for(condition, process, what):
  deadline = time.monotonic() + LIMIT_S
  while not condition():
    assert process.poll() is None, f'the run ended before {what}'
    assert time.monotonic() < deadline, f'no {what} within {LIMIT_S} s'
    time.sleep(0.01)


def _kill_at_random_point(process, workdir, rng):
  """SIGKILL once a random step is saved, after a random delay (mid-step, mid-save...)."""
  threshold = int(rng.choice([10, 15, 20, 25, 30, 35]))
  _wait_for(lambda: any(s >= threshold for s in checkpointing.list_steps(workdir)), process,
            f'step {threshold}')
  time.sleep(float(rng.uniform(0.0, 0.3)))
  assert process.poll() is None, 'the run ended before it could be killed'
  process.send_signal(signal.SIGKILL)
  assert process.wait(timeout=LIMIT_S) == -signal.SIGKILL
  return max(checkpointing.list_steps(workdir))


def _final_params(workdir, step):
  return jax.tree_util.tree_leaves(load_checkpoint(
      os.path.join(workdir, 'checkpoints', str(step)))[1])


def test_one_writer_kill_9_and_sigterm_in_evaluation_resume_identically(
    real_layout_data_dir, compilation_cache, tmp_path):
  env = _env(compilation_cache)
  rng = np.random.default_rng(14)
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  completed = subprocess.run(_command(real_layout_data_dir, straight), env=env, cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=LIMIT_S, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]

  # 1. A holds the workdir; a second training stops at once, naming A.
  run_a = subprocess.Popen(_command(real_layout_data_dir, interrupted), env=env, cwd=REPO_DIR,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(lambda: checkpointing.list_steps(interrupted), run_a, 'a first checkpoint')
    run_a.send_signal(signal.SIGSTOP)
    second = subprocess.run(_command(real_layout_data_dir, interrupted, '--config.seed=1'),
                            env=env, cwd=REPO_DIR, capture_output=True, text=True,
                            timeout=LIMIT_S, check=False)
    run_a.send_signal(signal.SIGCONT)
    assert second.returncode == 1, second.stderr[-3000:]
    last_line = second.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f'mdiqa-train: error: {interrupted}: another training is '
                                f'writing this workdir (pid {run_a.pid} on ')
    assert 'Traceback' not in second.stderr and 'Training ' not in second.stderr
    saved = json.loads(open(os.path.join(interrupted, 'config.json')).read())
    assert saved['seed'] == 0  # The second run wrote nothing.
    killed_at = _kill_at_random_point(run_a, interrupted, rng)
  finally:
    if run_a.poll() is None:
      run_a.kill()
      run_a.wait()
  # The kernel released A's lock with its process.
  with checkpointing.workdir_lock(interrupted):
    pass

  # 2. B resumes and is stopped by SIGTERM in the final test evaluation: status 0, no report.
  run_b = subprocess.Popen(_command(real_layout_data_dir, interrupted), env=env, cwd=REPO_DIR,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  log = b''
  try:
    # The progress bar of the test evaluation ('score test: 0%') comes without
    # a newline: read the bytes as they come.
    while b'score test' not in log:
      chunk = os.read(run_b.stderr.fileno(), 65536)
      assert chunk, log.decode(errors='replace')[-5000:]
      log += chunk
    run_b.send_signal(signal.SIGTERM)
    log += run_b.stderr.read()
    assert run_b.wait(timeout=LIMIT_S) == 0, log.decode(errors='replace')[-5000:]
  finally:
    if run_b.poll() is None:
      run_b.kill()
      run_b.wait()
  text = log.decode(errors='replace')
  assert f'Resumed from {interrupted} at step {killed_at}.' in text
  assert 'SIGTERM: stopped at step 60 before the job ended' in text, text[-3000:]
  report_dir = os.path.join(interrupted, 'eval_test')
  assert not os.path.exists(os.path.join(report_dir, 'metrics.json'))

  # 3. C evaluates; everything equals the uninterrupted run.
  completed = subprocess.run(_command(real_layout_data_dir, interrupted), env=env, cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=LIMIT_S, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  for a, b in zip(_final_params(straight, 60), _final_params(interrupted, 60)):
    np.testing.assert_array_equal(a, b)
  expected = json.loads(open(os.path.join(straight, 'eval_test', 'metrics.json')).read())
  actual = json.loads(open(os.path.join(report_dir, 'metrics.json')).read())
  for key in ('plcc', 'srocc', 'krocc', 'overall', 'num_examples'):
    assert actual[key] == expected[key], key
  assert sorted(os.listdir(report_dir)) == ['metrics.json', 'predictions.csv', 'scatter.png']
  assert checkpointing.list_steps(interrupted) == checkpointing.list_steps(straight)
  print(f'killed at step {killed_at}, SIGTERM in the final evaluation, resumed identically')
