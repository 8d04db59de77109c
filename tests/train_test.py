"""The training job: overfitting, the command line, non-finite losses."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import train
from mdiqa_jax import train_step
from mdiqa_jax.inference.checkpoint import load_checkpoint

from child_process import REPO_DIR, TESTS_DIR, child_env
import tiny_train_config

CONFIG_FILE = os.path.join(TESTS_DIR, 'tiny_train_config.py')


def run_train(workdir, data_dir, cache, *overrides, timeout=300):
  env = child_env(cache)
  command = [sys.executable, '-m', 'mdiqa_jax.train', f'--config={CONFIG_FILE}:{data_dir}',
             f'--workdir={workdir}', *overrides]
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False, cwd=REPO_DIR)


def test_overfits_a_small_batch():
  config = tiny_train_config.get_config()
  config.loss.name = 'gaussian_kl'  # Zero at the optimum, unlike the cross-entropy.
  config.optim.learning_rate = 3e-3
  config.optim.schedule = 'constant'
  model = models.create_model(config)
  params = jax.jit(train_step.init_params, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), tiny_train_config.IMAGE_SIZE)
  tx, learning_rate_fn = optim.create_optimizer(config.optim, models.param_groups(params),
                                                total_steps=60)
  parallel = train_step.DataParallel(
      train_step.make_train_step(config, model, losses.make_loss_fn(config), tx,
                                 learning_rate_fn), config.parallel)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      'image': rng.uniform(size=(8, 32, 32, 1)).astype(np.float32),
      'score': (np.round(rng.uniform(0, 4, 8) / 0.2) * 0.2).astype(np.float32)})
  state = parallel.replicate(
      train_step.create_train_state(params, tx, jax.random.PRNGKey(1), use_ema=False))
  history = []
  for _ in range(60):
    state, metrics = parallel.step(state, batch)
    history.append(float(parallel.fetch(metrics)['loss']))
  assert np.all(np.isfinite(history))
  assert history[-1] < history[0] / 10


def test_command_line_overrides_reach_the_model_and_the_run(tmp_path, tiny_data_dir,
                                                            compilation_cache):
  workdir = tmp_path / 'run'
  completed = run_train(workdir, tiny_data_dir, compilation_cache, '--config.num_train_steps=3',
                        '--config.optim.learning_rate=0.0123', '--config.model.vit.depth=1',
                        '--config.model.vit.feature_blocks=(0,)',
                        '--config.checkpoint_every_steps=2', '--config.eval_every_steps=0')
  assert completed.returncode == 0, completed.stderr[-5000:]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['num_train_steps'] == 3
  assert saved['optim']['learning_rate'] == 0.0123
  assert saved['model']['vit']['depth'] == 1
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '3']
  _, params = load_checkpoint(str(workdir))
  blocks = [name for name in params['vit'] if name.startswith('encoderblock')]
  assert blocks == ['encoderblock_0']
  # The default job ends with the test split's metrics on stdout and in a report.
  assert 'test: PLCC' in completed.stdout
  report = json.loads((workdir / 'eval_test' / 'metrics.json').read_text())
  assert report['num_examples'] == 8
  assert report['checkpoint'].endswith(os.path.join('checkpoints', '3'))
  assert (workdir / 'eval_test' / 'scatter.png').stat().st_size > 0
  assert any(name.startswith('events.out.tfevents')
             for name in os.listdir(workdir / 'tensorboard'))


def test_non_finite_loss_stops_and_keeps_only_finite_checkpoints(tmp_path, tiny_data_dir,
                                                                 compilation_cache):
  workdir = tmp_path / 'diverging'
  completed = run_train(workdir, tiny_data_dir, compilation_cache, '--config.num_train_steps=10',
                        '--config.optim.learning_rate=1e15', '--config.optim.grad_clip_norm=0',
                        '--config.checkpoint_every_steps=1', '--config.log_every_steps=1',
                        '--config.eval_every_steps=0')
  assert completed.returncode == 1
  message = completed.stderr.strip().splitlines()[-1]
  assert message.startswith('mdiqa-train: error: Non-finite training metrics at step ')
  bad_step = int(message.split('at step ')[1].split(':')[0])
  assert 1 < bad_step <= 10
  steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints'))
  assert steps and max(steps) < bad_step
  assert f'the last good checkpoint is step {max(steps)}' in message
  _, params = load_checkpoint(str(workdir))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def test_total_train_steps_counts_full_batches_per_epoch():
  config = tiny_train_config.get_config()
  config.num_train_steps = -1
  config.num_epochs = 3
  config.batch_size = 8
  assert train.total_train_steps(config, num_train_examples=33) == 12
  config.num_train_steps = 5
  assert train.total_train_steps(config, num_train_examples=33) == 5
