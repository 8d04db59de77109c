"""Optimiser: optax Adam / AdamW, warm-up + cosine schedule, clipping, backbone LR.

`create_optimizer(optim_config, param_labels, total_steps)` is the one place
that reads `config.optim`. Parameters labelled 'backbone' by
`mdiqa_jax.models.param_groups` (ViT and ConvNeXt, possibly pretrained) train
at `learning_rate * backbone_lr_multiplier`; everything else ('head') at the
full rate. The EMA of parameters (`ema_decay`) is applied by the train step,
not here, so evaluation can pick the averaged or the raw parameters.
Mixed precision is a model switch (`config.model.dtype='bfloat16'`): params,
gradients and optimiser state stay float32.
"""
from typing import Any, Callable, Tuple

import jax
import ml_collections
import optax

Schedule = Callable[[Any], jax.Array]
PARAM_GROUPS = ('backbone', 'head')


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


def _base_optimizer(optim_config: ml_collections.ConfigDict,
                    learning_rate: Schedule) -> optax.GradientTransformation:
  if optim_config.name == 'adam':
    if optim_config.weight_decay:
      raise ValueError(
          f'config.optim.weight_decay={optim_config.weight_decay} is ignored by '
          "config.optim.name='adam'; use name='adamw' for decoupled weight decay.")
    return optax.adam(learning_rate)
  if optim_config.name == 'adamw':
    return optax.adamw(learning_rate, weight_decay=float(optim_config.weight_decay))
  raise ValueError(f"config.optim.name={optim_config.name!r}; expected 'adam' or 'adamw'.")


def create_optimizer(optim_config: ml_collections.ConfigDict, param_labels: Any,
                     total_steps: int) -> Tuple[optax.GradientTransformation, Schedule]:
  """Builds the optimiser and its (head) learning-rate schedule.

  Args:
    optim_config: config.optim (name, learning_rate, backbone_lr_multiplier,
      weight_decay, warmup_steps, schedule, grad_clip_norm).
    param_labels: pytree of 'backbone' | 'head' labels, the structure of the
      params (`mdiqa_jax.models.param_groups(params)`).
    total_steps: optimiser steps of the whole run.
  Returns:
    (tx, schedule): the gradient transformation (global-norm clipping, then
    Adam / AdamW per parameter group) and schedule(step) -> head learning rate.
  """
  schedule = create_learning_rate_schedule(optim_config, total_steps)
  multiplier = float(optim_config.backbone_lr_multiplier)
  if multiplier < 0:
    raise ValueError(f'config.optim.backbone_lr_multiplier must be >= 0, got {multiplier}.')
  backbone_schedule = lambda step: multiplier * schedule(step)
  labels_used = set(jax.tree_util.tree_leaves(param_labels))
  if not labels_used <= set(PARAM_GROUPS):
    raise ValueError(f'param_labels hold {sorted(labels_used)}; expected only {PARAM_GROUPS}.')
  per_group = {
      'backbone': _base_optimizer(optim_config, backbone_schedule),
      'head': _base_optimizer(optim_config, schedule),
  }
  parts = []
  clip_norm = float(optim_config.grad_clip_norm)
  if clip_norm < 0:
    raise ValueError(f'config.optim.grad_clip_norm must be >= 0 (0 = off), got {clip_norm}.')
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.multi_transform(per_group, param_labels))
  return optax.chain(*parts), schedule


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """Exponential moving average: decay * ema + (1 - decay) * params, leafwise."""
  return jax.tree_util.tree_map(
      lambda ema, new: decay * ema + (1.0 - decay) * new.astype(ema.dtype), ema_params,
      params)

