"""Bad config values: each one a one-line error naming its field, before anything is written.

Every value below once failed late (ZeroDivisionError after building the
model, a flax AssertionError, an error after the whole training) or not at
all (a missing validation split silently disabled validation). Each now
stops `train.train_and_evaluate` with `ConfigError` before the workdir
exists; the command prints it as its last stderr line.
"""
import os
import subprocess
import sys

import pytest

from mdiqa_jax import config_validation
from mdiqa_jax import train

import real_layout_config
from child_process import REPO_DIR, TESTS_DIR, child_env

RELIABILITY_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = os.path.join(RELIABILITY_DIR, 'real_layout_config.py')
CNN = {'model.use_cnn': True}

# (field the error must name, overrides). The tiny config is ViT-only (width
# 16, depth 2); CNN fields are checked with the CNN branch switched on.
BAD_VALUES = [
    ('data.image_size', {'data.image_size': 0}),
    ('data.image_size', {'data.image_size': -32}),
    ('data.image_size', {'data.image_size': 48}),
    ('data.image_size', {'data.image_size': 32, 'model.vit.patch_size': 64}),
    ('data.pixel_mm_range', {'data.pixel_mm_range': (0.95, 0.6)}),
    ('data.pixel_mm_range', {'data.pixel_mm_range': (0.0, 0.9)}),
    ('data.pixel_mm_range', {'data.pixel_mm_range': (0.6,)}),
    ('data.pixel_mm', {'data.pixel_mm': 0.0}),
    ('data.pixel_mm', {'data.pixel_mm': float('nan')}),
    ('data.min_body_fraction', {'data.min_body_fraction': 1.5}),
    ('data.train_min_body_fraction', {'data.train_min_body_fraction': -0.1}),
    ('data.eval_split', {'data.eval_split': 'nosuchsplit'}),
    ('data.train_split', {'data.train_split': 'nosuchsplit'}),
    ('data.name', {'data.name': 'no_such_dataset'}),
    ('batch_size', {'batch_size': 64}),  # More than the 16 training examples.
    ('model.vit.num_heads', {'model.vit.num_heads': 3}),
    ('model.vit.feature_blocks', {'model.vit.feature_blocks': (0, 5)}),
    ('model.vit.depth', {'model.vit.depth': 0}),
    ('model.vit.dropout', {'model.vit.dropout': 1.0}),
    ('model.use_vit', {'model.use_vit': False}),
    ('model.use_alignment', {'model.use_alignment': True}),
    ('model.head.name', {'model.head.name': 'histogram'}),
    ('model.vit.variant', {'model.vit.variant': 'H/14'}),
    ('model.head.kwargs.num_distributions', {'model.head.kwargs.num_distributions': 0}),
    ('model.dtype', {'model.dtype': 'float64'}),
    ('model.input_std', {'model.input_std': 0.0}),
    ('model.head.bin_width', {'model.head.bin_width': 0.0}),
    ('model.head.bin_width', {'model.head.bin_width': 0.3}),
    ('model.head.score_max', {'model.head.score_max': 0.0}),
    ('model.align.num_scales', {**CNN, 'model.align.num_scales': 5}),
    ('model.convnext.depths', {**CNN, 'model.convnext.depths': (1, 1, 1)}),
    ('loss.kwargs.sigmas', {'loss.kwargs.sigmas': ()}),
    ('loss.kwargs.sigmas', {'loss.kwargs.sigmas': (0.1, -0.2, 0.5)}),
    ('loss.kwargs.sigmas', {'loss.kwargs.sigmas': (0.1, 0.5),  # K = 3 heads.
                            'loss.kwargs.scale_weights': (1.0, 1.0)}),
    ('loss.kwargs.scale_weights', {'loss.kwargs.scale_weights': (1.0,)}),
    ('loss.name', {'loss.name': 'hinge'}),
    # gaussian_ce needs distributions.
    ('loss.name', {'model.head.name': 'point', 'model.head.kwargs': {}}),
    ('optim.learning_rate', {'optim.learning_rate': 0.0}),
    ('optim.name', {'optim.name': 'lion'}),
    ('optim.lr_multipliers', {'optim.lr_multipliers': (('(unclosed', 0.1),)}),
    ('optim.schedule', {'optim.schedule': 'linear'}),
    ('optim', {'optim.kwargs': {'weight_decay': 0.1}}),  # Adam takes none.
    ('optim.warmup_steps', {'optim.warmup_steps': -1}),
    ('optim.grad_clip_norm', {'optim.grad_clip_norm': -1.0}),
    ('optim.ema_decay', {'optim.ema_decay': 1.0}),
    ('log_every_steps', {'log_every_steps': 0}),
    ('checkpoint_every_steps', {'checkpoint_every_steps': 0}),
    ('eval_every_steps', {'eval_every_steps': -5}),
    ('keep_checkpoints', {'keep_checkpoints': 0}),
    ('keep_best', {'keep_best': -1}),
    ('num_epochs', {'num_train_steps': -1, 'num_epochs': 0}),
    ('eval_batch_size', {'eval_batch_size': 0}),
    ('parallel', {'parallel': 'threads'}),
    ('seed', {'seed': -1}),
]


def test_each_bad_value_is_one_line_naming_its_field_before_anything_is_written(
    real_layout_data_dir, tmp_path):
  lines = []
  for index, (field, overrides) in enumerate(BAD_VALUES):
    config = real_layout_config.apply(real_layout_config.get_config(real_layout_data_dir),
                                      overrides)
    workdir = tmp_path / f'run{index}'
    with pytest.raises(config_validation.ConfigError) as error:
      train.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert '\n' not in message, message
    assert f'config.{field}' in message, (overrides, message)
    assert not workdir.exists(), overrides
    lines.append(message)
  assert len(BAD_VALUES) >= 37
  assert len(set(lines)) == len(lines)  # Each value is named in its own words.
  print(f'{len(BAD_VALUES)} bad config values, each a one-line error before any write')


def test_the_command_prints_the_error_as_one_line_and_exits_1(real_layout_data_dir,
                                                              tmp_path):
  workdir = tmp_path / 'run'
  env = child_env()
  env['PYTHONPATH'] = os.pathsep.join([RELIABILITY_DIR, TESTS_DIR, env['PYTHONPATH']])
  completed = subprocess.run(
      [sys.executable, '-m', 'mdiqa_jax.train', f'--config={CONFIG_FILE}:{real_layout_data_dir}',
       f'--workdir={workdir}', '--config.loss.kwargs.sigmas=()', '--config.log_every_steps=0',
       '--config.data.eval_split=nosuchsplit'],
      env=env, cwd=REPO_DIR, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 1, completed.stderr[-3000:]
  assert 'Traceback' not in completed.stderr
  last_line = completed.stderr.strip().splitlines()[-1]
  assert last_line.startswith('mdiqa-train: error: config.loss.kwargs.sigmas=(): expected at least '
                              'one width > 0'), last_line
  assert 'config.log_every_steps=0: expected an integer >= 1' in last_line
  assert not workdir.exists()
