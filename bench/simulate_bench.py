r"""Times synthetic-example generation (phantom, scan, FBP, raters).

For each spec (small: 128 px, challenge: 512 px) it measures
  - the per-process setup (the first example, which builds the cached
    projector / back-projector of the small geometry),
  - examples per second in one process (after setup),
  - examples per second with a multiprocessing pool of --processes workers
    (setup included, as a builder pays it),
and, for the small spec, the estimated time to generate the whole dataset
with the pool, and the histogram of the labels of the pooled examples.
Prints a summary and writes bench/results/simulate_bench.json.

  python bench/simulate_bench.py --small_examples=160 --challenge_examples=4
"""
import json
import multiprocessing
import os
import platform
import time

from absl import app
from absl import flags
import numpy as np

import bench_common
from mdiqa_jax.data import synthetic

_SMALL_EXAMPLES = flags.DEFINE_integer(
    'small_examples', 160, 'Examples timed per measurement at 128 px.')
_CHALLENGE_EXAMPLES = flags.DEFINE_integer(
    'challenge_examples', 4, 'Examples timed per measurement at 512 px '
    '(0 skips the challenge spec).')
_PROCESSES = flags.DEFINE_integer('processes', 2, 'Pool size.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results',
                           'simulate_bench.json'), 'JSON file to write.')


def _generate(task):
  spec, index = task
  return synthetic.generate_example(spec, 'train', index)[1]


def _benchmark(spec, num_examples):
  """Timings (and scores of the pooled examples) for one spec."""
  start = time.perf_counter()
  _generate((spec, num_examples))  # First example of a process: setup.
  setup = time.perf_counter() - start
  serial = max(1, num_examples // 4)
  start = time.perf_counter()
  for index in range(serial):
    _generate((spec, index))
  single = serial / (time.perf_counter() - start)
  tasks = [(spec, index) for index in range(num_examples)]
  start = time.perf_counter()
  with multiprocessing.get_context('spawn').Pool(_PROCESSES.value) as pool:
    examples = pool.map(_generate, tasks, chunksize=1)
  pooled = num_examples / (time.perf_counter() - start)
  return {
      'image_size': spec.image_size,
      'num_views_full': spec.num_views_full,
      'setup_seconds_per_process': round(setup, 3),
      'examples_per_second_single_process': round(single, 3),
      f'examples_per_second_{_PROCESSES.value}_processes': round(pooled, 3),
      'examples_timed': {'single_process': serial, 'pool': num_examples},
  }, np.array([float(example['score']) for example in examples])


def _add_estimates(result, spec):
  """Adds the time to generate every split of `spec`: one process (setup +
  examples at the steady rate) and the pool (its measured rate, which
  includes worker start-up and setup, so it is pessimistic)."""
  total = sum(synthetic.split_sizes(spec).values())
  single = result['examples_per_second_single_process']
  pooled = result[f'examples_per_second_{_PROCESSES.value}_processes']
  result['dataset_examples'] = total
  result['estimated_dataset_seconds_single_process'] = round(
      result['setup_seconds_per_process'] + total / single, 1)
  result[f'estimated_dataset_seconds_{_PROCESSES.value}_processes'] = round(
      total / pooled, 1)


def main(argv):
  del argv
  results = {
      'machine': {**bench_common.machine_info(),
                  'processor': platform.processor() or platform.machine(),
                  'load_average_1min_at_start': os.getloadavg()[0]},
      'processes': _PROCESSES.value,
  }
  small, scores = _benchmark(synthetic.SMALL_SPEC, _SMALL_EXAMPLES.value)
  _add_estimates(small, synthetic.SMALL_SPEC)
  counts, edges = np.histogram(scores, bins=[0, 0.8, 1.6, 2.4, 3.2, 4.01])
  small['label_histogram'] = {
      f'{low:.1f}-{high:.1f}': int(count)
      for low, high, count in zip(edges[:-1], edges[1:], counts)}
  small['label_mean'] = round(float(scores.mean()), 3)
  results['small'] = small
  if _CHALLENGE_EXAMPLES.value:
    challenge, _ = _benchmark(synthetic.CHALLENGE_SPEC, _CHALLENGE_EXAMPLES.value)
    _add_estimates(challenge, synthetic.CHALLENGE_SPEC)
    results['challenge'] = challenge
  results['machine']['load_average_1min_at_end'] = os.getloadavg()[0]
  print(json.dumps(results, indent=2))
  bench_common.write_results(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
