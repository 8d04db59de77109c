r"""Times building the default dataset and reading it through the input pipeline.

1. Build the default dataset (config.data.name) from scratch into a fresh
   temporary data_dir: wall time, simulated examples per second, and CPU
   time (this process + its worker processes): on a shared machine the wall
   time depends on the load; CPU time / number of CPUs is the build time on
   otherwise idle cores.
2. Train iterator (batch --batch_size of config.data.image_size native tiles
   inside the body, flips): examples per second over --batches batches after
   --warmup untimed ones, in-process (num_workers=0) and with worker processes.
3. The evaluation read pass over the validation split: reading every slice and
   cutting it into scoring tiles (`preprocess.cut_tiles`), slices/s and tiles
   per slice (the model's time is in predict_bench).

Prints a table and writes bench/results/pipeline_bench.json.

  python bench/pipeline_bench.py [--dataset=ldct_iqa_synthetic/clinical]
"""
import os
import resource
import shutil
import tempfile
import time

from absl import app
from absl import flags
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

import bench_common
from mdiqa_jax import config_base
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import preprocess

_DATASET = flags.DEFINE_string('dataset', config_base.base_config().data.name,
                               'TFDS name[/config] to build and read.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Per-host batch size.')
_BATCHES = flags.DEFINE_integer('batches', 100, 'Timed train batches.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches first.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'],
                             'config.data.num_workers values to time.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results',
                           'pipeline_bench.json'), 'JSON file to write.')


def _cpu_seconds() -> float:
  """CPU time of this process and its finished children (the pool workers)."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time_build(data_config) -> dict:
  cpu_start, start = _cpu_seconds(), time.perf_counter()
  builder = pipeline.prepare_dataset(data_config)
  seconds = time.perf_counter() - start
  cpu_seconds = _cpu_seconds() - cpu_start
  sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
  total = sum(sizes.values())
  cpus = len(os.sched_getaffinity(0))
  return {'seconds': seconds, 'split_sizes': sizes, 'examples': total,
          'examples_per_second': total / seconds,
          'cpu_seconds': cpu_seconds,
          'load_average_1min_at_end': os.getloadavg()[0],
          # What the build takes when no other process competes for the cores.
          'cpu_seconds_per_available_cpu': cpu_seconds / cpus,
          'image_shape': list(builder.info.features['image'].shape)}


def _time_train(data_config, num_workers: int) -> dict:
  config = data_config.copy_and_resolve_references()
  config.num_workers = num_workers
  start = time.perf_counter()
  iterator = pipeline.create_train_iterator(
      config, batch_size_per_host=_BATCH_SIZE.value, seed=0, process_index=0,
      process_count=1)
  for _ in range(_WARMUP.value):
    next(iterator)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  iterator.close()
  return {'num_workers': num_workers, 'startup_and_warmup_seconds': startup,
          'examples_per_second': _BATCHES.value * _BATCH_SIZE.value / seconds,
          'batch_image_shape': list(batch['image'].shape)}


def _time_eval(data_config) -> dict:
  start = time.perf_counter()
  slices = tiles = 0
  for _, example in pipeline.host_examples(data_config, data_config.eval_split,
                                           process_index=0, process_count=1):
    tiles += len(preprocess.cut_tiles(
        example['image'], tile_size=data_config.image_size, patch_size=16,
        min_body_fraction=data_config.min_body_fraction).images)
    slices += 1
  seconds = time.perf_counter() - start
  return {'slices': slices, 'slices_per_second': slices / seconds,
          'tiles_per_slice': tiles / slices}


def main(argv):
  del argv
  data_dir = tempfile.mkdtemp(prefix='pipeline_bench_')
  try:
    data_config = config_base.base_config().data
    data_config.name = _DATASET.value
    data_config.data_dir = data_dir
    build = _time_build(data_config)
    print(f'build {_DATASET.value}: {build["seconds"]:.1f} s wall '
          f'({build["cpu_seconds"]:.0f} CPU s = '
          f'{build["cpu_seconds_per_available_cpu"]:.0f} s per CPU) for '
          f'{build["examples"]} examples ({build["examples_per_second"]:.2f}/s), '
          f'splits {build["split_sizes"]}, image {build["image_shape"]}, '
          f'load average {os.getloadavg()[0]:.1f}')
    train = []
    for workers in map(int, _WORKERS.value):
      train.append(_time_train(data_config, workers))
      print(f'train iterator, num_workers={workers}: '
            f'{train[-1]["examples_per_second"]:.0f} examples/s '
            f'(batch {train[-1]["batch_image_shape"]})')
    evaluation = _time_eval(data_config)
    print(f'eval read pass: {evaluation["slices_per_second"]:.0f} slices/s, '
          f'{evaluation["tiles_per_slice"]:.1f} tiles per slice')
  finally:
    shutil.rmtree(data_dir)
  result = {
      'benchmark': 'input pipeline: dataset build from scratch, train and eval '
                   'iterators (grain over TFDS array_record data sources)',
      'dataset': _DATASET.value,
      **bench_common.machine_info(),
      'cpu_count': len(os.sched_getaffinity(0)),  # The CPUs this process may use.
      'versions': {'tensorflow_datasets': tfds.__version__,
                   'grain': grain.__version__,
                   'jax': jax.__version__, 'numpy': np.__version__},
      'image_size': data_config.image_size,
      'batch_size': _BATCH_SIZE.value,
      'timed_batches': _BATCHES.value,
      'build': build,
      'train_iterator': train,
      'eval_pass': evaluation,
  }
  bench_common.write_results(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
