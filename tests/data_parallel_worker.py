"""Subprocess worker of train_step_test.py and multihost_test.py (not a test).

  python tests/data_parallel_worker.py devices OUT.npz
      (run with 8 fake CPU devices) one step on a global batch of 16: the
      plain single-device reference step, then DataParallel under pmap and
      under shard_map; plus a step with per-example weights.
  python tests/data_parallel_worker.py reference OUT.npz
      two reference steps (one device, no collectives) on the two global batches.
  python tests/data_parallel_worker.py host OUT.npz MODE COORDINATOR PROCESS_ID NUM_PROCESSES
      one host of a jax.distributed run: two DataParallel steps, this host
      feeding its half of each global batch.

The reference step is written here, independently of mdiqa_jax.train_step:
the gradient of the weighted mean loss over the whole batch, no collectives.
Results go to OUT.npz as 'NAME/param/path' arrays plus 'NAME/metric' scalars.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_train_config  # pylint: disable=g-import-not-at-top,wrong-import-position

from mdiqa_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

GLOBAL_BATCH = 16
EMA_DECAY = 0.5
LEARNING_RATE = 0.1


def global_batch(index: int, weighted: bool = False):
  """Deterministic global batch number `index` (16 examples)."""
  rng = np.random.default_rng(100 + index)
  size = tiny_train_config.IMAGE_SIZE
  weight = (rng.uniform(0.0, 2.0, GLOBAL_BATCH).astype(np.float32) if weighted
            else np.ones(GLOBAL_BATCH, np.float32))
  if weighted:
    weight[:4] = 0.0  # Whole devices' worth of examples that must not count.
  return {
      'image': rng.uniform(size=(GLOBAL_BATCH, size, size, 1)).astype(np.float32),
      'score': (np.round(rng.uniform(0, 4, GLOBAL_BATCH) / 0.2) * 0.2).astype(np.float32),
      'weight': weight,
  }


def setup():
  """Model, loss, optimiser, step-0 state and the per-device step.

  The optimiser is plain SGD: Adam divides each gradient by its own magnitude,
  so parameters whose exact gradient is zero (attention key biases: softmax is
  shift invariant) would move by float noise blown up to a fraction of the
  learning rate. With SGD, equal parameters mean equal gradients.
  """
  config = tiny_train_config.get_config()
  config.optim.ema_decay = EMA_DECAY
  model = models.create_model(config)
  loss_fn = losses.make_loss_fn(config)
  params = jax.jit(train_step.init_params, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), tiny_train_config.IMAGE_SIZE)
  learning_rate_fn = optax.constant_schedule(LEARNING_RATE)
  tx = optax.sgd(learning_rate_fn)
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(1), use_ema=True)
  step_fn = train_step.make_train_step(config, model, loss_fn, tx, learning_rate_fn)
  return model, loss_fn, tx, state, step_fn


def make_reference_step(model, loss_fn, tx):
  @jax.jit
  def reference_step(params, opt_state, batch):
    def objective(p):
      outputs = model.apply({'params': p}, batch['image'], train=True,
                            rngs={'dropout': jax.random.PRNGKey(0)})
      per_example, _ = loss_fn(outputs, batch)
      return jnp.sum(batch['weight'] * per_example) / jnp.sum(batch['weight'])
    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)
  return reference_step


def flat(prefix, tree):
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[prefix + '/' + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def run_reference(results, name, model, loss_fn, tx, state, batches):
  reference_step = make_reference_step(model, loss_fn, tx)
  params, opt_state = state.params, state.opt_state
  for batch in batches:
    params, opt_state, loss, grad_norm = reference_step(params, opt_state, batch)
  results.update(flat(name + '/params', params))
  results[name + '/loss'] = np.asarray(loss)
  results[name + '/grad_norm'] = np.asarray(grad_norm)


def run_parallel(results, name, mode, step_fn, state, host_batches):
  parallel = train_step.DataParallel(step_fn, mode)
  device_state = parallel.replicate(state)
  for batch in host_batches:
    device_state, metrics = parallel.step(device_state, parallel.shard_batch(batch))
  host_state = parallel.fetch(device_state)
  metrics = parallel.fetch(metrics)
  results.update(flat(name + '/params', host_state.params))
  results.update(flat(name + '/ema', host_state.ema_params))
  results[name + '/loss'] = np.asarray(metrics['loss'])
  results[name + '/grad_norm'] = np.asarray(metrics['grad_norm'])
  results[name + '/step'] = np.asarray(host_state.step)


def main(argv):
  command, out_path = argv[1], argv[2]
  results = {}
  if command == 'host':
    mode, coordinator, process_id, num_processes = argv[3], argv[4], int(argv[5]), int(argv[6])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  model, loss_fn, tx, state, step_fn = setup()
  results.update(flat('init/params', state.params))
  if command == 'devices':
    batch = global_batch(0)
    run_reference(results, 'reference', model, loss_fn, tx, state, [batch])
    for mode in ('pmap', 'shard_map'):
      run_parallel(results, mode, mode, step_fn, state, [batch])
    weighted = global_batch(0, weighted=True)
    run_reference(results, 'reference_weighted', model, loss_fn, tx, state, [weighted])
    run_parallel(results, 'pmap_weighted', 'pmap', step_fn, state, [weighted])
    results['device_count'] = np.asarray(jax.device_count())
  elif command == 'reference':
    run_reference(results, 'reference', model, loss_fn, tx, state,
                  [global_batch(0), global_batch(1)])
  elif command == 'host':
    rows = GLOBAL_BATCH // num_processes
    # Each host feeds its own block of rows; together they are the global batch.
    host_batches = [{k: v[process_id * rows:(process_id + 1) * rows]
                     for k, v in global_batch(i).items()} for i in range(2)]
    run_parallel(results, 'host', mode, step_fn, state, host_batches)
    results['device_count'] = np.asarray(jax.device_count())
    results['process_count'] = np.asarray(jax.process_count())
  else:
    raise SystemExit(f'unknown command {command!r}')
  np.savez(out_path, **results)


if __name__ == '__main__':
  main(sys.argv)
