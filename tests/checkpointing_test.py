"""Checkpoints: keep policy, inference loading, SIGKILL + resume, SIGTERM, checksums, lock."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax import checkpointing
from mdiqa_jax import models
from mdiqa_jax import train_step
from mdiqa_jax.inference.checkpoint import load_checkpoint

from child_process import REPO_DIR, TESTS_DIR, child_env
import tiny_train_config

CONFIG_FILE = os.path.join(TESTS_DIR, 'tiny_train_config.py')


def train_command(workdir, data_dir, *overrides):
  return [sys.executable, '-m', 'mdiqa_jax.train', f'--config={CONFIG_FILE}:{data_dir}',
          f'--workdir={workdir}', *overrides]


def step_dirs(workdir):
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints'))
                if name.isdigit())


def test_keeps_the_last_n_and_the_best_k_by_validation_srocc(tmp_path):
  manager = checkpointing.create_manager(str(tmp_path), keep_last=2, keep_best=1,
                                         async_save=False)
  validation = {1: 0.5, 2: 0.9, 3: 0.4, 4: None, 5: 0.3, 6: None}
  for step, srocc in validation.items():
    metrics = None if srocc is None else {'srocc': srocc, 'plcc': 0.0}
    checkpointing.save(manager, step, {'w': np.full((3,), step, np.float32)}, metrics=metrics)
  manager.wait_until_finished()
  manager.close()
  # Last two (5, 6) plus the best validation SROCC (2).
  assert step_dirs(tmp_path) == [2, 5, 6]
  assert checkpointing.resolve_checkpoint(str(tmp_path)) == (str(tmp_path), 2)
  step_dir = tmp_path / 'checkpoints' / '5'
  assert checkpointing.resolve_checkpoint(str(step_dir)) == (str(tmp_path), 5)


def test_a_relative_workdir_saves_and_resolves(tmp_path, monkeypatch):
  # The README's main command passes --workdir=runs/default; Orbax refuses relative paths.
  monkeypatch.chdir(tmp_path)
  manager = checkpointing.create_manager(os.path.join('runs', 'default'), keep_last=1,
                                         keep_best=0, async_save=True)
  checkpointing.save(manager, 3, {'w': np.arange(4, dtype=np.float32)})
  manager.wait_until_finished()
  manager.close()
  workdir = str(tmp_path / 'runs' / 'default')
  assert step_dirs(workdir) == [3]
  assert checkpointing.resolve_checkpoint('runs/default') == (workdir, 3)


def test_resolve_checkpoint_names_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match='neither a training workdir'):
    checkpointing.resolve_checkpoint(str(tmp_path))


def test_saved_params_that_do_not_fit_the_model_are_listed_before_reading(tmp_path):
  params = {'head': {'kernel': np.ones((4, 3), np.float32), 'bias': np.zeros(3, np.float32)},
            'stem': {'kernel': np.ones((2, 2), np.float32)}}
  manager = checkpointing.create_manager(str(tmp_path), keep_last=1, keep_best=0,
                                         async_save=False)
  checkpointing.save(manager, 7, train_step.TrainState(
      step=jnp.int32(7), params=params, opt_state={}, ema_params=None,
      rng=jax.random.PRNGKey(0)))
  manager.close()
  step_dir = tmp_path / 'checkpoints' / '7'
  checkpointing.check_saved_params_fit(step_dir, 'params', params)  # Fits: no error.
  changed = {'head': {'kernel': np.ones((4, 5), np.float32), 'bias': np.zeros(5, np.float32)},
             'neck': {'kernel': np.ones((2, 2), np.float32)}}
  with pytest.raises(ValueError) as error:
    checkpointing.check_saved_params_fit(step_dir, 'params', changed)
  message = str(error.value)
  assert message.startswith(f'{step_dir}: the saved params do not fit')
  assert 'missing from the checkpoint (1): neck/kernel' in message
  assert 'in the checkpoint but not in the model (1): stem/kernel' in message
  assert ('shape mismatches (2): head/bias: checkpoint (3,) vs model (5,), '
          'head/kernel: checkpoint (4, 3) vs model (4, 5)') in message
  with pytest.raises(ValueError, match="the saved state has no 'ema_params'"):
    checkpointing.check_saved_params_fit(step_dir, 'ema_params', params)


@pytest.mark.parametrize('ema_decay', [0.0, 0.9])
def test_load_for_inference_returns_ema_params_when_the_run_kept_them(tmp_path, ema_decay):
  config = tiny_train_config.get_config()
  config.optim.ema_decay = ema_decay
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda rng: train_step.init_params(
      model, rng, tiny_train_config.IMAGE_SIZE), jax.random.PRNGKey(0))
  raw = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 1.0, s.dtype), shapes)
  averaged = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 2.0, s.dtype), shapes)
  state = train_step.TrainState(step=jnp.int32(7), params=raw, opt_state={},
                                ema_params=averaged, rng=jax.random.PRNGKey(3))
  checkpointing.save_config(config, str(tmp_path))
  manager = checkpointing.create_manager(str(tmp_path), keep_last=1, keep_best=0)
  checkpointing.save(manager, 7, state)
  manager.wait_until_finished()
  manager.close()
  loaded_config, params = load_checkpoint(str(tmp_path))
  assert loaded_config.optim.ema_decay == ema_decay
  assert loaded_config.model.vit.feature_blocks == (0, 1)  # Tuples survive JSON.
  expected = 2.0 if ema_decay else 1.0
  leaves = jax.tree_util.tree_leaves(params)
  assert len(leaves) == len(jax.tree_util.tree_leaves(shapes))
  assert all(isinstance(leaf, np.ndarray) and np.all(leaf == expected) for leaf in leaves)


RESUME_OVERRIDES = ('--config.num_train_steps=200', '--config.checkpoint_every_steps=20',
                    '--config.eval_every_steps=100', '--config.log_every_steps=50',
                    '--config.keep_checkpoints=2', '--config.keep_best=1')


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path, tiny_data_dir,
                                                            compilation_cache):
  env = child_env(compilation_cache)
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  completed = subprocess.run(train_command(straight, tiny_data_dir, *RESUME_OVERRIDES),
                             env=env, capture_output=True, text=True, timeout=300, check=False,
                             cwd=REPO_DIR)
  assert completed.returncode == 0, completed.stderr[-5000:]

  process = subprocess.Popen(train_command(interrupted, tiny_data_dir, *RESUME_OVERRIDES),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=REPO_DIR)
  deadline = time.time() + 240
  checkpoints = os.path.join(interrupted, 'checkpoints')
  while time.time() < deadline and process.poll() is None:
    if os.path.isdir(checkpoints) and any(s >= 40 for s in step_dirs(interrupted)):
      break
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  killed_at = step_dirs(interrupted)
  assert 200 not in killed_at

  resumed = subprocess.run(train_command(interrupted, tiny_data_dir, *RESUME_OVERRIDES),
                           env=env, capture_output=True, text=True, timeout=300,
                           check=False, cwd=REPO_DIR)
  assert resumed.returncode == 0, resumed.stderr[-5000:]
  assert f'Resumed from {interrupted} at step {max(killed_at)}' in resumed.stderr

  _, straight_params = load_checkpoint(os.path.join(straight, 'checkpoints',
                                                                     '200'))
  _, resumed_params = load_checkpoint(os.path.join(interrupted, 'checkpoints',
                                                                    '200'))
  for a, b in zip(jax.tree_util.tree_leaves(straight_params),
                  jax.tree_util.tree_leaves(resumed_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for name in ('eval_test/metrics.json', 'checkpoints/200/metrics/metrics'):
    expected = json.loads(open(os.path.join(straight, name), encoding='utf-8').read())
    actual = json.loads(open(os.path.join(interrupted, name), encoding='utf-8').read())
    for key in ('plcc', 'srocc', 'krocc'):
      np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6)
  # Nothing half-written is left, and every kept step restores.
  names = os.listdir(os.path.join(interrupted, 'checkpoints'))
  assert all(name.isdigit() for name in names), names
  for step in step_dirs(interrupted):
    load_checkpoint(os.path.join(interrupted, 'checkpoints', str(step)))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_data_dir,
                                                      compilation_cache):
  workdir = str(tmp_path / 'preempted')
  process = subprocess.Popen(
      train_command(workdir, tiny_data_dir, '--config.num_train_steps=100000',
                    '--config.checkpoint_every_steps=100000', '--config.eval_every_steps=0',
                    '--config.log_every_steps=10'),
      env=child_env(compilation_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True, cwd=REPO_DIR)
  log = []
  try:
    for line in process.stderr:
      log.append(line)
      if 'step 10/100000' in line:
        process.send_signal(signal.SIGTERM)
        break
    log.extend(process.stderr)
    process.wait(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, ''.join(log)[-5000:]
  saved = [line for line in log if 'SIGTERM: saved step' in line]
  assert len(saved) == 1, ''.join(log)[-5000:]
  step = int(saved[0].split('saved step ')[1].split(' ')[0])
  assert step >= 10
  assert step_dirs(workdir) == [step]
  load_checkpoint(os.path.join(workdir, 'checkpoints', str(step)))


def test_every_single_flipped_bit_in_the_data_is_caught_at_restore(tmp_path):
  rng = np.random.default_rng(18)
  state = train_step.TrainState(
      step=jnp.int32(3), params={'w': rng.normal(size=(64, 32)).astype(np.float32)},
      opt_state={'m': rng.normal(size=(500,)).astype(np.float32)}, ema_params=None,
      rng=jax.random.PRNGKey(0))
  original = str(tmp_path / 'original')
  manager = checkpointing.create_manager(original, keep_last=1, keep_best=0, async_save=False)
  checkpointing.save(manager, 3, state)
  manager.close()
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      state)
  relative = [os.path.relpath(p, original) for p in sorted(
      glob.glob(os.path.join(original, 'checkpoints', '3', 'state', 'ocdbt.process_*', 'd', '*')))]
  outcomes = []
  for trial in range(18):
    copy = str(tmp_path / f'flip{trial}')
    shutil.copytree(original, copy)
    path = os.path.join(copy, relative[trial % len(relative)])
    data = bytearray(open(path, 'rb').read())
    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    open(path, 'wb').write(bytes(data))
    manager = checkpointing.create_manager(copy, keep_last=1, keep_best=0, async_save=False)
    try:
      restored = checkpointing.restore(manager, 3, abstract)
      outcomes.append('unchanged')  # The bit lay outside every array restored.
      for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    except checkpointing.DamagedStepError as error:
      outcomes.append('caught')
      assert str(error).startswith(os.path.join(copy, 'checkpoints', '3') + ': ')
    finally:
      manager.close()
  # Never a silently different array: each flip is caught or changed nothing
  # restored (it fell in bytes no array is read from).
  assert 'caught' in outcomes, outcomes


def test_the_workdir_lock_refuses_a_second_holder_and_is_free_after(tmp_path):
  workdir = str(tmp_path / 'run')
  with checkpointing.workdir_lock(workdir) as path:
    assert open(path).read().startswith(f'pid {os.getpid()} on ')
    with pytest.raises(checkpointing.WorkdirLockedError,
                       match=f'another training is writing this workdir \\(pid {os.getpid()} '):
      with checkpointing.workdir_lock(workdir):
        pass
  with checkpointing.workdir_lock(workdir):  # Released with the first holder.
    pass
