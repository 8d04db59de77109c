"""The train step, written once per device, and the data-parallel wrappers.

`train_step(state, batch, ...)` is the pure per-device function: it sees the
device's slice of the global batch and talks to the other devices only through
explicit collectives over the named axis 'batch' (`lax.psum`). `DataParallel`
runs that same function under `jax.pmap` (the project's original
specification) or under `jax.shard_map` over a Mesh of all devices inside
`jax.jit` (`config.parallel`); both average gradients over every device of
every host. bench/train_bench.py measures the two; see the README for the
choice of default.

Global batch semantics: `config.batch_size` is the number of examples one
optimiser step sees over all hosts and devices. Each host feeds
batch_size / process_count examples; each device gets an equal slice of that.
The loss is the weighted mean over the global batch (weights from
batch['weight'], default 1), so a data-parallel step equals the single-device
step on the concatenated batch up to float summation order.
"""
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mdiqa_jax import optim

AXIS = 'batch'
# Batch entries the step reads; anything else (ids, file names) stays on the host.
STEP_KEYS = ('image', 'score', 'weight', 'target_probs')
Batch = Dict[str, Any]
Metrics = Dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator position.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters (float32).
    opt_state: optax state.
    ema_params: exponential moving average of params, or None when
      config.optim.ema_decay == 0.
    rng: uint32 (2,) base key; step t, device d draws dropout from
      fold_in(fold_in(rng, t), d), so a resumed run repeats the same noise.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


def init_params(model, rng: jax.Array, image_size: int) -> Any:
  """Initialises model params for (1, image_size, image_size, 1) inputs."""
  images = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng}, images, train=False)
  if set(variables) != {'params'}:
    raise ValueError(f'The model holds collections {sorted(variables)}; the train step '
                     "handles only 'params' (no batch statistics).")
  return variables['params']


def param_shapes(model, image_size: int) -> Any:
  """The jax.ShapeDtypeStruct tree of `init_params` (traced, nothing computed)."""
  return jax.eval_shape(functools.partial(init_params, model, image_size=image_size),
                        jax.random.PRNGKey(0))


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                       use_ema: bool) -> TrainState:
  """Step-0 state: fresh optimiser state, EMA (if used) starting at params."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      ema_params=jax.tree_util.tree_map(jnp.array, params) if use_ema else None,
      rng=rng)


def _weighted_mean(values: jax.Array, weights: jax.Array, total_weight: jax.Array,
                   axis_name: str) -> jax.Array:
  return lax.psum(jnp.sum(weights * values), axis_name) / total_weight


def train_step(state: TrainState, batch: Batch, *, model, loss_fn: Callable,
               tx: optax.GradientTransformation, learning_rate_fn: Callable,
               ema_decay: float, axis_name: str = AXIS) -> Tuple[TrainState, Metrics]:
  """One optimiser step on this device's slice of the global batch.

  Args:
    state: TrainState, identical on every device.
    batch: 'image' (b, H, W, 1) float32 in [0, 1], 'score' (b,) float32, and
      optionally 'weight' (b,) per-example weights and 'target_probs'
      (b, K, num_bins) soft targets; b = this device's slice.
    model: flax module; `apply(..., train=True)` returns the MD-IQA output dict.
    loss_fn: losses.make_loss_fn(config) -> (per-example loss (b,), aux dict).
    tx: optimiser (optim.create_optimizer).
    learning_rate_fn: schedule(step) -> head learning rate, for logging.
    ema_decay: EMA decay in [0, 1); 0 leaves state.ema_params None.
    axis_name: the mapped axis the devices share.
  Returns:
    (new_state, metrics): metrics are scalars identical on every device:
    'loss' (weighted mean over the global batch), the weighted means of the
    loss_fn aux terms, 'mae' of the score, 'grad_norm' (before clipping),
    'param_norm', 'learning_rate'.
  """
  device_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                  lax.axis_index(axis_name))
  weights = batch.get('weight')
  if weights is None:
    weights = jnp.ones_like(batch['score'])
  # Normalising by the global weight makes the psum of per-device gradients
  # the gradient of the global weighted mean, also when weights differ by device.
  total_weight = jnp.maximum(lax.psum(jnp.sum(weights), axis_name), 1e-12)

  def objective(params):
    outputs = model.apply({'params': params}, batch['image'], train=True,
                          rngs={'dropout': device_rng})
    per_example, aux = loss_fn(outputs, batch)
    return jnp.sum(weights * per_example) / total_weight, (per_example, aux, outputs)

  grads, (per_example, aux, outputs) = jax.grad(objective, has_aux=True)(state.params)
  grads = lax.psum(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay:
    ema_params = optim.ema_update(ema_params, params, ema_decay)

  metrics = {
      'loss': _weighted_mean(per_example, weights, total_weight, axis_name),
      'mae': _weighted_mean(jnp.abs(outputs['score'] - batch['score']), weights,
                            total_weight, axis_name),
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'learning_rate': learning_rate_fn(state.step),
  }
  for name, values in aux.items():
    metrics[name] = _weighted_mean(values, weights, total_weight, axis_name)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema_params)
  return new_state, metrics


def make_train_step(config, model, loss_fn: Callable, tx: optax.GradientTransformation,
                    learning_rate_fn: Callable) -> Callable:
  """Binds the config-dependent arguments: per-device step(state, batch)."""
  ema_decay = float(config.optim.ema_decay)
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f'config.optim.ema_decay must be in [0, 1), got {ema_decay}.')
  return functools.partial(train_step, model=model, loss_fn=loss_fn, tx=tx,
                           learning_rate_fn=learning_rate_fn, ema_decay=ema_decay)


def _host_copy(x: Any) -> np.ndarray:
  """numpy copy of an array; a replicated global array gives its local copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)


class DataParallel:
  """Runs a per-device step over all devices, under pmap or shard_map.

  Layouts: with 'pmap' the state lives as stacked copies, one per local device
  (leading axis), and a host batch is reshaped to (local_devices, b, ...);
  with 'shard_map' the state is a replicated global jax.Array and the batch a
  global array sharded along its first axis over a Mesh of all devices.
  Callers only use `replicate`, `shard_batch`, `step`, `fetch` and
  `to_global`, so the two are interchangeable.
  """

  def __init__(self, per_device_step: Callable, mode: str):
    if mode not in ('pmap', 'shard_map'):
      raise ValueError(f"config.parallel={mode!r}; expected 'pmap' or 'shard_map'.")
    self.mode = mode
    self.local_devices = jax.local_devices()
    self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
    self.replicated_sharding = NamedSharding(self.mesh, PartitionSpec())
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
    self._local_stack_sharding = NamedSharding(
        Mesh(np.asarray(self.local_devices), (AXIS,)), PartitionSpec(AXIS))
    if mode == 'pmap':
      self._step = jax.pmap(per_device_step, axis_name=AXIS, donate_argnums=0)
    else:
      # check_vma=False gives pmap's semantics: the replicated state enters each
      # device as a local value, so jax.grad returns per-device gradients and
      # the step's explicit psum is the only reduction. (With varying-manual-axes
      # checking, the gradient of a replicated input is already summed over
      # devices, and the step's psum would count it once per device again.)
      mapped = jax.shard_map(per_device_step, mesh=self.mesh,
                             in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                             out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)
      self._step = jax.jit(mapped, donate_argnums=0)

  def replicate(self, tree: Any) -> Any:
    """Pytree identical on every host (numpy, or jax.Arrays such as a restored
    replicated state) -> the step's state layout."""
    count = len(self.local_devices)

    def put(x):
      if (self.mode == 'shard_map' and isinstance(x, jax.Array) and
          x.sharding.is_equivalent_to(self.replicated_sharding, x.ndim)):
        return x
      x = _host_copy(x)
      if self.mode == 'pmap':
        return jax.device_put(np.broadcast_to(x, (count,) + x.shape),
                              self._local_stack_sharding)
      return jax.make_array_from_process_local_data(self.replicated_sharding, x)
    return jax.tree_util.tree_map(put, tree)

  def shard_batch(self, host_batch: Batch) -> Batch:
    """This host's numpy batch (b_host, ...) -> the step's input layout.

    Only STEP_KEYS are kept. b_host must divide evenly over local devices.
    """
    count = len(self.local_devices)
    out = {}
    for key in STEP_KEYS:
      if key not in host_batch:
        continue
      value = np.asarray(host_batch[key])
      if value.shape[0] % count:
        raise ValueError(f'The per-host batch of {value.shape[0]} examples does not split '
                         f'over {count} local devices; make config.batch_size a multiple '
                         f'of the device count ({jax.device_count()}).')
      if self.mode == 'pmap':
        out[key] = value.reshape((count, value.shape[0] // count) + value.shape[1:])
      else:
        out[key] = jax.make_array_from_process_local_data(self._batch_sharding, value)
    return out

  def step(self, state: Any, batch: Batch) -> Tuple[Any, Metrics]:
    """One data-parallel step; `state` is donated (do not reuse it)."""
    return self._step(state, batch)

  def fetch(self, tree: Any) -> Any:
    """Device-layout pytree (state or metrics) -> numpy, one copy."""
    def get(x):
      shard = np.asarray(x.addressable_shards[0].data)
      return shard[0] if self.mode == 'pmap' else shard
    return jax.tree_util.tree_map(get, tree)

  def to_global(self, tree: Any) -> Any:
    """Device layout -> replicated global jax.Arrays (what Orbax saves)."""
    if self.mode == 'shard_map':
      return tree
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self.replicated_sharding, x),
        self.fetch(tree))


def abstract_state(make_state: Callable[[], TrainState],
                   sharding: Optional[NamedSharding] = None) -> TrainState:
  """Shape/dtype (and sharding) skeleton of `make_state()`, for Orbax restore."""
  shapes = jax.eval_shape(make_state)
  if sharding is None:
    return shapes
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
