"""Config validation: every field a run reads, checked before the run writes anything.

  validate_config(config)                   the fields alone, and the model they
                                            build (traced, not compiled); no data read
  validate_splits(config, num_examples_fn)  the splits it names exist and hold
                                            enough examples

Both raise `ConfigError`, whose message is one line naming every bad field,
its value and what was expected, e.g.
  config.loss.sigmas=(): expected at least one width > 0 (score units)
The training job calls both before it creates the workdir (`train.py`); the
commands print the message as their one-line error (`command_errors`).
"""
import functools
import math
import numbers
from typing import Any, Callable, List, Optional

import jax
import ml_collections

from mdiqa_jax import command_errors
from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import train_step

# Every tile is a multiple of the ConvNeXt's total stride (config.data.image_size).
TILE_MULTIPLE = 32
PARALLEL_MODES = ('shard_map', 'pmap')
_MISSING = object()


class ConfigError(command_errors.UserError, ValueError):
  """A config field holds a value the run cannot use; the message names the field."""


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split('.'):
    try:
      value = value[part]
    except (KeyError, AttributeError, TypeError):
      return _MISSING
  return value


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool) and
          math.isfinite(float(value)))


class _Checker:
  """Collects 'config.<field>=<value>: expected <what>' problems."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: List[str] = []

  def value(self, field: str) -> Any:
    return _get(self.config, field)

  def require(self, field: str, ok: Callable[[Any], bool], expected: str) -> bool:
    value = self.value(field)
    if value is _MISSING:
      self.problems.append(f'config.{field} is missing: expected {expected}')
      return False
    try:
      passed = bool(ok(value))
    except (TypeError, ValueError):
      passed = False
    if not passed:
      self.problems.append(f'config.{field}={value!r}: expected {expected}')
    return passed

  def integer(self, field: str, minimum: int) -> bool:
    return self.require(field, lambda v: _is_int(v) and v >= minimum,
                        f'an integer >= {minimum}')

  def positive(self, field: str) -> bool:
    return self.require(field, lambda v: _is_real(v) and v > 0, 'a finite number > 0')

  def non_negative(self, field: str) -> bool:
    return self.require(field, lambda v: _is_real(v) and v >= 0, 'a finite number >= 0')

  def fraction(self, field: str, *, closed_top: bool = True) -> bool:
    top = ']' if closed_top else ')'
    return self.require(field, lambda v: _is_real(v) and 0 <= v and (
        v <= 1 if closed_top else v < 1), f'a number in [0, 1{top}')

  def choice(self, field: str, choices) -> bool:
    return self.require(field, lambda v: v in choices, f'one of {tuple(choices)}')

  def flag(self, field: str) -> bool:
    return self.require(field, lambda v: isinstance(v, bool), 'True or False')

  def fail(self, message: str) -> None:
    self.problems.append(message)


def _check_data(check: _Checker) -> None:
  check.require('data.name', lambda v: isinstance(v, str) and v, 'a TFDS dataset name')
  for field in ('train_split', 'eval_split', 'test_split'):
    check.require(f'data.{field}', lambda v: isinstance(v, str),
                  "a split name ('' for none)")
  check.require('data.train_split', lambda v: isinstance(v, str) and v, 'a split name')
  if check.integer('data.image_size', TILE_MULTIPLE):
    patch = check.value('model.vit.patch_size')
    multiple = math.lcm(TILE_MULTIPLE, patch) if _is_int(patch) and patch > 0 else (
        TILE_MULTIPLE)
    check.require('data.image_size', lambda v: v % multiple == 0,
                  f'a multiple of {TILE_MULTIPLE} and of config.model.vit.patch_size '
                  f'({multiple})')
  check.require('data.pixel_mm_range', lambda v: (
      len(v) == 2 and all(_is_real(x) for x in v) and 0 < v[0] <= v[1]),
                'two spacings (low, high) in mm with 0 < low <= high')
  check.positive('data.pixel_mm')
  check.fraction('data.min_body_fraction')
  check.fraction('data.train_min_body_fraction')
  check.flag('data.random_flip')
  check.integer('data.num_workers', 0)


def _check_model(check: _Checker) -> None:
  for field in ('use_vit', 'use_cnn', 'use_alignment'):
    check.flag(f'model.{field}')
  use_vit, use_cnn = check.value('model.use_vit'), check.value('model.use_cnn')
  if use_vit is False and use_cnn is False:
    check.fail('config.model.use_vit=False and config.model.use_cnn=False: expected at '
               'least one branch')
  if check.value('model.use_alignment') is True and not (use_vit and use_cnn):
    check.fail('config.model.use_alignment=True: expected use_vit=True and use_cnn=True '
               '(alignment needs both branches; set use_alignment=False for one branch)')
  check.choice('model.head_type', ('distribution', 'point'))
  check.choice('model.dtype', ('float32', 'bfloat16', 'float16'))
  check.require('model.input_mean', _is_real, 'a finite number')
  check.positive('model.input_std')
  # The patch grid is the ViT's even without the ViT branch (models/mdiqa.py).
  check.integer('model.vit.patch_size', 1)
  if use_vit:
    check.integer('model.vit.depth', 1)
    if check.integer('model.vit.width', 1) and check.integer('model.vit.num_heads', 1):
      width = check.value('model.vit.width')
      check.require('model.vit.num_heads', lambda v: width % v == 0,
                    f'a divisor of config.model.vit.width ({width})')
    check.positive('model.vit.mlp_ratio')
    check.fraction('model.vit.dropout', closed_top=False)
    depth = check.value('model.vit.depth')
    check.require('model.vit.feature_blocks', lambda v: len(v) >= 1 and all(
        _is_int(b) and 0 <= b < depth for b in v),
                  f'one or more block indices in [0, config.model.vit.depth={depth})')
  if use_cnn:
    check.require('model.convnext.depths', lambda v: len(v) == 4 and all(
        _is_int(d) and d >= 1 for d in v), 'four stage depths >= 1')
    check.require('model.convnext.widths', lambda v: len(v) == 4 and all(
        _is_int(w) and w >= 1 for w in v), 'four stage widths >= 1')
    check.fraction('model.convnext.drop_path', closed_top=False)
    check.require('model.align.num_scales', lambda v: _is_int(v) and 1 <= v <= 4,
                  'an integer in [1, 4] (the number of ConvNeXt stages)')
    check.integer('model.align.width', 1)
    if check.value('model.use_alignment'):
      check.require('model.align.kernel_size', lambda v: _is_int(v) and v >= 1 and v % 2,
                    'an odd integer >= 1')
      check.integer('model.align.offset_groups', 1)
  check.integer('model.head.hidden', 1)
  score_min, score_max = check.value('model.head.score_min'), check.value('model.head.score_max')
  if check.require('model.head.score_min', _is_real, 'a finite number') and check.require(
      'model.head.score_max', lambda v: _is_real(v) and v > score_min,
      f'a number > config.model.head.score_min ({score_min})'):
    if check.positive('model.head.bin_width'):
      try:
        losses.bin_centers(float(score_min), float(score_max),
                           float(check.value('model.head.bin_width')))
      except ValueError:
        check.fail(f'config.model.head.bin_width={check.value("model.head.bin_width")!r}: '
                   f'expected a step that divides [{score_min}, {score_max}] evenly')


def _check_loss(check: _Checker) -> None:
  types = tuple(losses.DISTRIBUTION_LOSSES) + tuple(losses.POINT_LOSSES)
  if check.choice('loss.type', types):
    loss_type = check.value('loss.type')
    if loss_type in losses.DISTRIBUTION_LOSSES and check.value('model.head_type') == 'point':
      check.fail(f"config.loss.type={loss_type!r}: expected a point loss "
                 f"{tuple(losses.POINT_LOSSES)} with config.model.head_type='point'")
  sigmas_ok = check.require('loss.sigmas', lambda v: len(v) >= 1 and all(
      _is_real(s) and s > 0 for s in v), 'at least one width > 0 (score units)')
  if sigmas_ok:
    count = len(check.value('loss.sigmas'))
    check.require('loss.scale_weights', lambda v: len(v) == count and all(
        _is_real(w) and w >= 0 for w in v) and sum(v) > 0,
                  f'{count} weights >= 0 (one per config.loss.sigmas), not all 0')
  check.non_negative('loss.point_weight')


def _check_optim(check: _Checker) -> None:
  check.choice('optim.name', ('adam', 'adamw'))
  check.positive('optim.learning_rate')
  check.non_negative('optim.backbone_lr_multiplier')
  if check.non_negative('optim.weight_decay') and check.value('optim.weight_decay') and (
      check.value('optim.name') == 'adam'):
    check.fail(f'config.optim.weight_decay={check.value("optim.weight_decay")!r}: expected 0 '
               "with config.optim.name='adam' (use 'adamw' for weight decay)")
  check.integer('optim.warmup_steps', 0)
  check.choice('optim.schedule', ('cosine', 'constant'))
  check.non_negative('optim.grad_clip_norm')
  check.fraction('optim.ema_decay', closed_top=False)


def _check_loop(check: _Checker) -> None:
  check.integer('seed', 0)
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    check.require(field, lambda v: _is_int(v) and v >= 1 and v % devices == 0,
                  f'a positive multiple of the number of devices ({devices})')
  if check.require('num_train_steps', _is_int, 'an integer (> 0, or <= 0 to use num_epochs)'):
    if check.value('num_train_steps') <= 0:
      check.require('num_epochs', lambda v: _is_real(v) and v > 0,
                    'a number > 0 when config.num_train_steps <= 0')
  for field in ('log_every_steps', 'checkpoint_every_steps'):
    check.integer(field, 1)
  check.integer('eval_every_steps', 0)
  check.integer('keep_checkpoints', 1)
  check.integer('keep_best', 0)
  check.flag('async_checkpointing')
  check.choice('parallel', PARALLEL_MODES)
  check.flag('distributed')


def _check_model_builds(check: _Checker, config: ml_collections.ConfigDict) -> None:
  """Traces the model, its loss and optimiser (nothing compiled, nothing allocated)."""
  try:
    model = models.create_model(config)
    losses.make_loss_fn(config)
    shapes = jax.eval_shape(functools.partial(
        train_step.init_params, model, image_size=int(config.data.image_size)),
                            jax.random.PRNGKey(0))
    optim.create_optimizer(config.optim, models.param_groups(shapes), total_steps=1000)
  except Exception as e:  # Flax, JAX and the builders raise many types.
    message = ' '.join(str(e).split()) or type(e).__name__
    check.fail(f'config.model: the model of this config does not build on '
               f'{config.data.image_size}-pixel tiles ({type(e).__name__}: {message})')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field a training run reads (module docstring).

  Raises:
    ConfigError: one line listing every bad field, its value and what was expected.
  """
  check = _Checker(config)
  for section in (_check_data, _check_model, _check_loss, _check_optim, _check_loop):
    section(check)
  if not check.problems:
    _check_model_builds(check, config)
  if check.problems:
    raise ConfigError('; '.join(check.problems) + '.')


def validate_splits(config: ml_collections.ConfigDict,
                    num_examples_fn: Callable[[str], int], *,
                    process_count: Optional[int] = None) -> None:
  """Checks that the splits the run reads exist and hold enough examples.

  Args:
    config: a config that passed `validate_config`.
    num_examples_fn: split name -> number of examples; raises KeyError or
      ValueError for a split the dataset does not have.
    process_count: hosts sharing the training split (default jax.process_count()).

  Raises:
    ConfigError: naming the split field, the dataset and its splits.
  """
  process_count = jax.process_count() if process_count is None else process_count
  data = config.data
  problems = []

  def size_of(field: str) -> Optional[int]:
    split = data[field]
    try:
      return int(num_examples_fn(split))
    except (KeyError, ValueError) as e:
      reason = ' '.join(str(e).split())
      problems.append(f'config.data.{field}={split!r}: no such split in {data.name} '
                      f'({reason})')
      return None

  train_size = size_of('train_split')
  per_host_batch = config.batch_size // process_count
  if train_size is not None and train_size // process_count < per_host_batch:
    problems.append(f'config.batch_size={config.batch_size}: expected at most the '
                    f'{train_size} examples of config.data.train_split={data.train_split!r} '
                    f'({process_count} host(s))')
  if config.eval_every_steps > 0 and data.eval_split:
    eval_size = size_of('eval_split')
    if eval_size == 0:
      problems.append(f'config.data.eval_split={data.eval_split!r}: the split is empty')
  if problems:
    raise ConfigError('; '.join(problems) + '.')
