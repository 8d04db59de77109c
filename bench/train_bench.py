r"""Training throughput of the whole train step: images/s, compile time, memory, MFU.

  PYTHONPATH=. python bench/train_bench.py [--configs=default,paper]
      [--modes=shard_map] [--depthwise=auto,xla] [--condition=factored,resize]
      [--remat=false] [--dtypes=float32]
      [--steps=5 --rounds=4] [--batch_size=paper=2 --steps_for=paper=1]

For each config and each variant (every combination of `config.parallel`,
the ConvNeXt depthwise implementation, the alignment's conditioning
convolution `config.model.align.condition`, `config.model.remat` and
`config.model.dtype`), compiles the data-parallel train step
(mdiqa_jax.train_step.DataParallel over all local devices) ahead of time on
random batches of the config's global batch size and image size, then times
`--rounds` rounds, each running `--steps` steps of every variant in turn (the
load of a shared machine drifts; interleaving exposes all variants to it
alike). Reported per variant: compile seconds, the first step apart, the
median step time and images/s; XLA's cost analysis (FLOPs per step) and
memory analysis (argument, output, temporary bytes; peak bytes in use where
the device reports it); and, on an accelerator whose peak is known (or given
by --peak_tflops), MFU = FLOPs / step time / peak, the peak of the variant's
dtype (float32 counts at the TF32 tensor-core rate, XLA's default for float32
matmuls on NVIDIA GPUs). The input pipeline is not in the loop
(bench/pipeline_bench.py times it). Writes bench/results/train_bench.json.

The depthwise implementation 'xla' is the path before ops/depthwise.py ('auto'
picks the shifted multiply-adds on CPU), so --depthwise=auto,xla measures the
gain side by side; likewise --condition=factored,resize for the alignment's
conditioning convolution ('resize' is the path before ops/resized_conv.py), and
--depthwise=xla --condition=resize together is the whole train step as it was
before both. bench/gpu_check.sh runs this on a GPU in under 5 minutes.
"""
import itertools
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

# Dense peak FLOP/s per device by jax device_kind: (bfloat16, float32 as TF32).
PEAK_FLOPS = {
    'NVIDIA H200': (989e12, 494e12),
    'NVIDIA H100 80GB HBM3': (989e12, 494e12),
    'NVIDIA H100 PCIe': (756e12, 378e12),
    'NVIDIA A100-SXM4-80GB': (312e12, 156e12),
    'NVIDIA A100-SXM4-40GB': (312e12, 156e12),
    'NVIDIA L4': (121e12, 60e12),
}

_CONFIGS = flags.DEFINE_list('configs', ['default', 'paper'], 'Configs to time.')
_MODES = flags.DEFINE_list('modes', ['shard_map'], 'config.parallel values.')
_DEPTHWISE = flags.DEFINE_list('depthwise', ['auto', 'xla'],
                               'ConvNeXt depthwise implementations (ops/depthwise.py).')
_CONDITION = flags.DEFINE_list('condition', ['factored', 'resize'],
                               'config.model.align.condition values (models/align.py).')
_REMAT = flags.DEFINE_list('remat', ['false'], 'config.model.remat values (true / false).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'config.model.dtype values.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per config, variant and round.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds; each times every variant in turn.')
_BATCH_SIZES = flags.DEFINE_multi_string(
    'batch_size', [], 'NAME=SIZE: global batch size for a config (default: the config\'s), '
    'e.g. paper=2 on a CPU.')
_STEPS_PER_CONFIG = flags.DEFINE_multi_string(
    'steps_for', [], 'NAME=STEPS: steps per round for one config (default --steps).')
_PEAK_TFLOPS = flags.DEFINE_float('peak_tflops', None,
                                  'Peak TFLOP/s per device for MFU (default: PEAK_FLOPS).')
_OUTPUT = flags.DEFINE_string('output', os.path.join(REPO_DIR, 'bench', 'results',
                                                     'train_bench.json'), 'JSON output.')


def _parse_pairs(values):
  pairs = {}
  for value in values:
    name, _, number = value.partition('=')
    pairs[name] = int(number)
  return pairs


def _parse_bool(value: str) -> bool:
  if value.lower() not in ('true', 'false'):
    raise ValueError(f'--remat: expected true or false, got {value!r}.')
  return value.lower() == 'true'


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of one device for `dtype` matmuls, None when unknown."""
  if _PEAK_TFLOPS.value:
    return _PEAK_TFLOPS.value * 1e12
  peaks = PEAK_FLOPS.get(device_kind)
  return None if peaks is None else peaks[0 if dtype == 'bfloat16' else 1]


def build_model(config, depthwise: str):
  """create_model(config) with the ConvNeXt branch's depthwise implementation set."""
  model = models.create_model(config)
  if model.convnext is None:
    return model
  return model.clone(convnext=model.convnext.clone(depthwise_implementation=depthwise))


def compiled_step(name: str, variant: dict, batch_size: int):
  """Builds and compiles one variant; returns (entry, run_one_step)."""
  config = CONFIGS[name]()
  config.batch_size = batch_size
  config.parallel = variant['parallel']
  config.model.remat = variant['remat']
  config.model.align.condition = variant['condition']
  config.model.dtype = variant['dtype']
  model = build_model(config, variant['depthwise'])
  params = jax.jit(train_step.init_params, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), config.data.image_size)
  tx, learning_rate_fn = optim.create_optimizer(config.optim, models.param_groups(params),
                                                total_steps=1000)
  parallel = train_step.DataParallel(
      train_step.make_train_step(config, model, losses.make_loss_fn(config), tx,
                                 learning_rate_fn), variant['parallel'])
  holder = {'state': parallel.replicate(train_step.create_train_state(
      params, tx, jax.random.PRNGKey(1), use_ema=bool(config.optim.ema_decay)))}
  rng = np.random.default_rng(0)
  size = config.data.image_size
  batch = parallel.shard_batch(
      {'image': rng.uniform(size=(batch_size, size, size, 1)).astype(np.float32),
       'score': rng.uniform(0, 4, batch_size).astype(np.float32)})
  start = time.perf_counter()
  step = jax.jit(parallel.step, donate_argnums=0).lower(holder['state'], batch).compile()
  compile_seconds = time.perf_counter() - start

  def run_one_step() -> float:
    start = time.perf_counter()
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  memory = step.memory_analysis()
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  entry = {
      'config': name, **variant, 'global_batch_size': batch_size,
      'image_size': size, 'parameters': models.count_params(params),
      'compile_seconds': compile_seconds, 'first_step_seconds': run_one_step(),
      'flops_per_step': float(cost.get('flops', 0.0)) if cost else None,
      'memory_bytes': None if memory is None else {
          'arguments': memory.argument_size_in_bytes, 'outputs': memory.output_size_in_bytes,
          'temporaries': memory.temp_size_in_bytes, 'aliased': memory.alias_size_in_bytes},
  }
  return entry, run_one_step


def time_config(name: str, variants: list, batch_size: int, steps: int, rounds: int) -> list:
  """Times every variant of one config, interleaving rounds of `steps` steps."""
  entries, runners, seconds = [], [], []
  for variant in variants:
    entry, run_one_step = compiled_step(name, variant, batch_size)
    entries.append(entry)
    runners.append(run_one_step)
    seconds.append([])
  for _ in range(rounds):
    for runner, timings in zip(runners, seconds):
      timings.extend(runner() for _ in range(steps))
  device = jax.devices()[0]
  peak_in_use = (device.memory_stats() or {}).get('peak_bytes_in_use')
  for entry, timings in zip(entries, seconds):
    median = statistics.median(timings)
    peak = peak_flops(device.device_kind, entry['dtype'])
    entry.update(timed_steps=len(timings), step_seconds_median=median,
                 step_seconds_min=min(timings), images_per_second=batch_size / median,
                 device_peak_bytes_in_use=peak_in_use,
                 mfu=(entry['flops_per_step'] / jax.local_device_count() / median / peak
                      if peak and entry['flops_per_step'] else None))
  return entries


def main(argv):
  del argv
  batch_sizes = _parse_pairs(_BATCH_SIZES.value)
  steps_for = _parse_pairs(_STEPS_PER_CONFIG.value)
  variants = [dict(parallel=mode, depthwise=depthwise, condition=condition,
                   remat=_parse_bool(remat), dtype=dtype)
              for mode, depthwise, condition, remat, dtype in itertools.product(
                  _MODES.value, _DEPTHWISE.value, _CONDITION.value, _REMAT.value,
                  _DTYPES.value)]
  load = {'before': os.getloadavg()[0]}
  results = []
  for name in _CONFIGS.value:
    batch_size = batch_sizes.get(name, CONFIGS[name]().batch_size)
    for entry in time_config(name, variants, batch_size, steps_for.get(name, _STEPS.value),
                             _ROUNDS.value):
      print(json.dumps(entry), flush=True)
      results.append(entry)
    load[f'after_{name}'] = os.getloadavg()[0]
  for name in _CONFIGS.value:
    rows = [r for r in results if r['config'] == name]
    fastest = min(rows, key=lambda r: r['step_seconds_median'])
    print(f'{name}: ' + ', '.join(
        f'{r["parallel"]}/{r["depthwise"]}/{r["condition"]}/remat={r["remat"]}/{r["dtype"]} '
        f'{r["step_seconds_median"]:.3f} s '
        f'({r["step_seconds_median"] / fastest["step_seconds_median"]:.2f}x the fastest)'
        for r in rows))
  report = {
      'benchmark': 'data-parallel train step (compiled ahead of time), random batches, '
                   'no input pipeline; variants interleaved round by round',
      **bench_common.machine_info(),
      'load_average_1min': load,
      'versions': {'jax': jax.__version__, 'numpy': np.__version__},
      'results': results,
  }
  bench_common.write_results(_OUTPUT.value, report)


if __name__ == '__main__':
  app.run(main)
