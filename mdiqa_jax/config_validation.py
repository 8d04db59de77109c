"""Config validation: every field a run reads, checked before the run writes anything.

  validate_config(config)                   the fields alone, and the model they
                                            build (traced, not compiled); no data read
  validate_splits(config, num_examples_fn)  the splits it names exist and hold
                                            enough examples

Both raise `ConfigError`, whose message is one line naming every bad field,
its value and what was expected, e.g.
  config.loss.kwargs.sigmas=(): expected at least one width > 0 (score units)
The training job calls both before it creates the workdir (`train.py`); the
commands print the message as their one-line error (`command_errors`).
"""
import math
import numbers
import re
from typing import Any, Callable, List, Optional

import jax
import jax.numpy as jnp
import ml_collections

from mdiqa_jax import command_errors
from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import train_step
from mdiqa_jax.models import align as align_lib
from mdiqa_jax.models import bins
from mdiqa_jax.models import convnext as convnext_lib
from mdiqa_jax.models import head as head_lib
from mdiqa_jax.models import vit as vit_lib
from mdiqa_jax.models.head import HEADS

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


def _resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose vit / convnext sections hold their decoded architecture
  (preset + overrides), so that each field is checked under its own name."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  for section, decode in (('vit', vit_lib.decode_variant),
                          ('convnext', convnext_lib.decode_variant)):
    try:
      resolved.model[section].update(decode(resolved.model[section]))
    except (ValueError, KeyError, AttributeError, TypeError):
      pass  # _check_model names the variant.
  return resolved


def _check_backbone(check: _Checker, section: str, presets) -> None:
  check.choice(f'model.{section}.name', tuple(models.BACKBONES))
  check.require(f'model.{section}.variant', lambda v: v is None or (
      isinstance(v, str) and v.lower() in presets), f'None or one of {sorted(presets)}')


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
  check.choice('model.head.name', tuple(HEADS))
  check.choice('model.dtype', ('float32', 'bfloat16', 'float16'))
  check.require('model.input_mean', _is_real, 'a finite number')
  check.positive('model.input_std')
  # The patch grid is the ViT's even without the ViT branch (models/mdiqa.py).
  _check_backbone(check, 'vit', vit_lib.PRESET_NAMES)
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
    _check_backbone(check, 'convnext', convnext_lib.PRESET_NAMES)
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
      if check.value('model.align.condition') is not _MISSING:
        check.choice('model.align.condition', align_lib.CONDITION_IMPLEMENTATIONS)
  check.integer('model.head.hidden', 1)
  if check.value('model.head.kwargs.num_distributions') is not _MISSING:
    check.integer('model.head.kwargs.num_distributions', 1)
  score_min, score_max = check.value('model.head.score_min'), check.value('model.head.score_max')
  if check.require('model.head.score_min', _is_real, 'a finite number') and check.require(
      'model.head.score_max', lambda v: _is_real(v) and v > score_min,
      f'a number > config.model.head.score_min ({score_min})'):
    if check.positive('model.head.bin_width'):
      try:
        bins.bin_centers(float(score_min), float(score_max),
                         float(check.value('model.head.bin_width')))
      except ValueError:
        check.fail(f'config.model.head.bin_width={check.value("model.head.bin_width")!r}: '
                   f'expected a step that divides [{score_min}, {score_max}] evenly')


def _check_loss(check: _Checker) -> None:
  """The name, and the arguments of the built-in Gaussian losses where given."""
  check.choice('loss.name', tuple(losses.LOSSES))
  if check.value('loss.kwargs.sigmas') is _MISSING:
    return
  sigmas_ok = check.require('loss.kwargs.sigmas', lambda v: len(v) >= 1 and all(
      _is_real(s) and s > 0 for s in v), 'at least one width > 0 (score units)')
  if sigmas_ok:
    count = len(check.value('loss.kwargs.sigmas'))
    check.require('loss.kwargs.scale_weights', lambda v: len(v) == count and all(
        _is_real(w) and w >= 0 for w in v) and sum(v) > 0,
                  f'{count} weights >= 0 (one per config.loss.kwargs.sigmas), not all 0')
    heads = check.value('model.head.kwargs.num_distributions')
    if heads is not _MISSING and heads != count:
      check.fail(f'config.loss.kwargs.sigmas={check.value("loss.kwargs.sigmas")!r}: expected '
                 f'one width per distribution (config.model.head.kwargs.num_distributions='
                 f'{heads})')
  check.non_negative('loss.kwargs.point_weight')


def _check_optim(check: _Checker) -> None:
  check.choice('optim.name', tuple(optim.OPTIMIZERS))
  check.positive('optim.learning_rate')
  check.require('optim.lr_multipliers', lambda v: all(
      len(pair) == 2 and isinstance(pair[0], str) and _compiles(pair[0]) and
      _is_real(pair[1]) and pair[1] >= 0 for pair in v),
                '(regex, multiplier >= 0) pairs')
  check.integer('optim.warmup_steps', 0)
  check.choice('optim.schedule', ('cosine', 'constant'))
  check.non_negative('optim.grad_clip_norm')
  check.fraction('optim.ema_decay', closed_top=False)


def _compiles(pattern: str) -> bool:
  try:
    re.compile(pattern)
  except re.error:
    return False
  return True


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


def _failure(error: Exception) -> str:
  return f'{type(error).__name__}: {" ".join(str(error).split()) or type(error).__name__}'


def _check_model_builds(check: _Checker, config: ml_collections.ConfigDict) -> None:
  """Traces model, head contract, loss and optimiser (nothing compiled or allocated)."""
  size = int(config.data.image_size)
  try:
    model = models.create_model(config)
    shapes = train_step.param_shapes(model, size)
    images = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    outputs = jax.eval_shape(lambda p, x: model.apply({'params': p}, x), shapes, images)
  except Exception as e:  # Flax, JAX and the builders raise many types.
    check.fail(f'config.model: the model of this config does not build on {size}-pixel '
               f'tiles ({_failure(e)})')
    return
  head = config.model.head
  num_bins = int(bins.bin_centers(head.score_min, head.score_max, head.bin_width).shape[0])
  grid = size // models.patch_size(config.model)
  try:
    head_lib.check_outputs(outputs, 2, (grid, grid), num_bins)
  except ValueError as e:
    check.fail(f'config.model.head.name={head.name!r}: {e}')
    return
  batch = {'score': jax.ShapeDtypeStruct((2,), jnp.float32)}
  try:
    jax.eval_shape(losses.make_loss_fn(config), outputs, batch)
  except Exception as e:  # A loss may fail on any output it lacks.
    check.fail(f'config.loss.name={config.loss.name!r}: does not build or does not accept '
               f'the outputs of config.model.head.name={head.name!r} ({_failure(e)})')
  try:
    tx, _ = optim.create_optimizer(config.optim, shapes, total_steps=1000)
    jax.eval_shape(tx.init, shapes)
  except Exception as e:  # optax constructors reject unknown kwargs with TypeError.
    check.fail(f'config.optim: the optimiser {config.optim.name!r} does not build with '
               f'config.optim.kwargs={dict(config.optim.kwargs)!r} ({_failure(e)})')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field a training run reads (module docstring).

  Raises:
    ConfigError: one line listing every bad field, its value and what was expected.
  """
  check = _Checker(_resolved(config))
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
