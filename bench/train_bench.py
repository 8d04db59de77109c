r"""Training throughput: step time and images/s per config and parallel mode.

  python bench/train_bench.py [--configs=default,paper] [--modes=pmap,shard_map]
      [--steps=5 --rounds=4] [--batch_size=paper=2 --steps_for=paper=1]

For each config and each `config.parallel` mode, times the compiled data-parallel
train step (mdiqa_jax.train_step.DataParallel over all local devices) on
random batches of the config's global batch size and image size: compile time
(first step), then the median wall time of the steps (each waited for) of
`--rounds` rounds, each running `--steps` steps of every mode in turn.
The input pipeline is not in the loop (bench/pipeline_bench.py times it).
Writes bench/results/train_bench.json.
"""
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import paper as paper_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIGS = {'default': default_config.get_config, 'paper': paper_config.get_config}

_CONFIGS = flags.DEFINE_list('configs', ['default', 'paper'], 'Configs to time.')
_MODES = flags.DEFINE_list('modes', ['pmap', 'shard_map'], 'config.parallel values.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per config, mode and round.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds; each times every mode in turn.')
_BATCH_SIZES = flags.DEFINE_multi_string(
    'batch_size', [], 'NAME=SIZE: global batch size for a config (default: the config\'s), '
    'e.g. paper=2 on a CPU.')
_STEPS_PER_CONFIG = flags.DEFINE_multi_string(
    'steps_for', [], 'NAME=STEPS: steps per round for one config (default --steps).')
_OUTPUT = flags.DEFINE_string('output', os.path.join(REPO_DIR, 'bench', 'results',
                                                     'train_bench.json'), 'JSON output.')


def _parse_pairs(values):
  pairs = {}
  for value in values:
    name, _, number = value.partition('=')
    pairs[name] = int(number)
  return pairs


def compiled_step(name: str, mode: str, batch_size: int):
  """Builds config `name` under `mode`; returns (config, params count, run_one_step)."""
  config = CONFIGS[name]()
  config.batch_size = batch_size
  config.parallel = mode
  model = models.create_model(config)
  params = jax.jit(train_step.init_params, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), config.data.image_size)
  tx, learning_rate_fn = optim.create_optimizer(config.optim, models.param_groups(params),
                                                total_steps=1000)
  parallel = train_step.DataParallel(
      train_step.make_train_step(config, model, losses.make_loss_fn(config), tx,
                                 learning_rate_fn), mode)
  holder = {'state': parallel.replicate(train_step.create_train_state(
      params, tx, jax.random.PRNGKey(1), use_ema=bool(config.optim.ema_decay)))}
  rng = np.random.default_rng(0)
  size = config.data.image_size
  host_batch = {'image': rng.uniform(size=(batch_size, size, size, 1)).astype(np.float32),
                'score': rng.uniform(0, 4, batch_size).astype(np.float32)}

  def run_one_step() -> float:
    start = time.perf_counter()
    holder['state'], metrics = parallel.step(holder['state'], parallel.shard_batch(host_batch))
    jax.block_until_ready(metrics)
    return time.perf_counter() - start
  return config, models.count_params(params), run_one_step


def time_config(name: str, modes, batch_size: int, steps: int, rounds: int) -> list:
  """Times every mode of one config, interleaving rounds of `steps` steps.

  On a shared machine the load drifts; alternating the modes round by round
  exposes them to the same drift, so their medians compare fairly.
  """
  entries, runners = {}, {}
  for mode in modes:
    config, num_params, run_one_step = compiled_step(name, mode, batch_size)
    compile_seconds = run_one_step()
    runners[mode] = run_one_step
    entries[mode] = {
        'config': name, 'parallel': mode, 'global_batch_size': batch_size,
        'image_size': config.data.image_size, 'dtype': config.model.dtype,
        'parameters': num_params, 'compile_and_first_step_seconds': compile_seconds,
        'step_seconds': []}
  for _ in range(rounds):
    for mode in modes:
      entries[mode]['step_seconds'].extend(runners[mode]() for _ in range(steps))
  for entry in entries.values():
    seconds = entry.pop('step_seconds')
    entry.update(timed_steps=len(seconds), step_seconds_median=statistics.median(seconds),
                 step_seconds_min=min(seconds),
                 images_per_second=batch_size / statistics.median(seconds))
  return list(entries.values())


def main(argv):
  del argv
  batch_sizes = _parse_pairs(_BATCH_SIZES.value)
  steps_for = _parse_pairs(_STEPS_PER_CONFIG.value)
  results = []
  for name in _CONFIGS.value:
    batch_size = batch_sizes.get(name, CONFIGS[name]().batch_size)
    for entry in time_config(name, _MODES.value, batch_size,
                             steps_for.get(name, _STEPS.value), _ROUNDS.value):
      print(json.dumps(entry), flush=True)
      results.append(entry)
  for name in _CONFIGS.value:
    by_mode = {r['parallel']: r['step_seconds_median'] for r in results if r['config'] == name}
    if len(by_mode) > 1:
      print(f'{name}: fastest mode {min(by_mode, key=by_mode.get)} {by_mode}')
  report = {
      'benchmark': 'data-parallel train step (compiled), random batches, no input pipeline',
      **bench_common.machine_info(),
      'versions': {'jax': jax.__version__, 'numpy': np.__version__},
      'results': results,
  }
  bench_common.write_results(_OUTPUT.value, report)


if __name__ == '__main__':
  app.run(main)
