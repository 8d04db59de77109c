"""Optimiser: a named optax optimiser, warm-up + cosine schedule, clipping, LR multipliers.

`create_optimizer(optim_config, params, total_steps)` is the one place that
reads `config.optim`:
  name, kwargs        the optimiser, from `OPTIMIZERS` ('adam' = the paper's,
                      'adamw' with kwargs.weight_decay, 'sgd'), called as
                      builder(learning_rate_schedule, **kwargs); a new one is
                      a function registered with `@OPTIMIZERS.register('name')`
  lr_multipliers      (regex, multiplier) pairs: a parameter whose path
                      ('vit/block_0/...', '/'-joined) matches a regex
                      (re.search; the first pair that matches wins) trains at
                      multiplier x the schedule; the others at the schedule
The EMA of parameters (`ema_decay`) is applied by the train step, not here, so
evaluation can pick the averaged or the raw parameters. Mixed precision is a
model switch (`config.model.dtype='bfloat16'`): params, gradients and
optimiser state stay float32.
"""
import re
from typing import Any, Callable, Sequence, Tuple

import jax
import ml_collections
import optax

from mdiqa_jax.registry import Registry

Schedule = Callable[[Any], jax.Array]
OPTIMIZERS = Registry('optimiser', 'config.optim.name')
# Label of the parameters no lr_multipliers regex matches.
DEFAULT_GROUP = 'default'

OPTIMIZERS.register('adam')(optax.adam)
OPTIMIZERS.register('adamw')(optax.adamw)
OPTIMIZERS.register('sgd')(optax.sgd)


def create_learning_rate_schedule(optim_config: ml_collections.ConfigDict,
                                  total_steps: int) -> Schedule:
  """Linear warm-up from 0 to `learning_rate`, then cosine to 0 or constant.

  Args:
    optim_config: config.optim (learning_rate, warmup_steps, schedule).
    total_steps: number of optimiser steps of the whole run, >= 1.
  Returns:
    schedule(step) -> learning rate (float32 scalar) for the head group.
  """
  peak = float(optim_config.learning_rate)
  warmup_steps = int(optim_config.warmup_steps)
  if peak <= 0:
    raise ValueError(f'config.optim.learning_rate must be > 0, got {peak}.')
  if total_steps < 1:
    raise ValueError(f'The run has {total_steps} training steps; it needs at least 1 '
                     '(check config.num_epochs, config.batch_size, the train split size).')
  if warmup_steps < 0:
    raise ValueError(f'config.optim.warmup_steps must be >= 0, got {warmup_steps}.')
  warmup_steps = min(warmup_steps, total_steps)
  if optim_config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  elif optim_config.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.optim.schedule={optim_config.schedule!r}; expected 'cosine' "
                     "or 'constant'.")
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def parameter_names(tree: Any) -> Any:
  """The same tree with every leaf replaced by its '/'-joined path ('vit/cls')."""
  def name(path, _):
    return '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)
  return jax.tree_util.tree_map_with_path(name, tree)


def multiplier_labels(tree: Any, lr_multipliers: Sequence[Tuple[str, float]]) -> Any:
  """Labels every leaf with the index of the first lr_multipliers regex its path
  matches ('0', '1', ...), or DEFAULT_GROUP; same tree."""
  patterns = [re.compile(pattern) for pattern, _ in lr_multipliers]

  def label(name: str) -> str:
    return next((str(i) for i, p in enumerate(patterns) if p.search(name)), DEFAULT_GROUP)
  return jax.tree_util.tree_map(label, parameter_names(tree))


def create_optimizer(optim_config: ml_collections.ConfigDict, params: Any,
                     total_steps: int) -> Tuple[optax.GradientTransformation, Schedule]:
  """Builds the optimiser and its learning-rate schedule.

  Args:
    optim_config: config.optim (name, kwargs, learning_rate, lr_multipliers,
      warmup_steps, schedule, grad_clip_norm).
    params: the parameters, or any tree of their structure (shapes, names):
      only the paths are read.
    total_steps: optimiser steps of the whole run.
  Returns:
    (tx, schedule): the gradient transformation (global-norm clipping, then
    the optimiser per learning-rate group) and schedule(step) -> the learning
    rate of the parameters no multiplier applies to.
  """
  schedule = create_learning_rate_schedule(optim_config, total_steps)
  build = OPTIMIZERS.get(optim_config.name)
  kwargs = dict(optim_config.kwargs)
  multipliers = [(str(pattern), float(value)) for pattern, value in
                 optim_config.lr_multipliers]
  for pattern, value in multipliers:
    if value < 0:
      raise ValueError(f'config.optim.lr_multipliers: {pattern!r} has multiplier {value}; '
                       'expected >= 0.')
  per_group = {DEFAULT_GROUP: build(schedule, **kwargs)}
  for index, (_, value) in enumerate(multipliers):
    per_group[str(index)] = build(lambda step, value=value: value * schedule(step), **kwargs)
  parts = []
  clip_norm = float(optim_config.grad_clip_norm)
  if clip_norm < 0:
    raise ValueError(f'config.optim.grad_clip_norm must be >= 0 (0 = off), got {clip_norm}.')
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.multi_transform(per_group, multiplier_labels(params, multipliers)))
  return optax.chain(*parts), schedule


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """Exponential moving average: decay * ema + (1 - decay) * params, leafwise."""
  return jax.tree_util.tree_map(
      lambda ema, new: decay * ema + (1.0 - decay) * new.astype(ema.dtype), ema_params,
      params)

