r"""Times the synthetic-data simulator and builds the default dataset.

At the clinical spec (`synthetic.CLINICAL_SPEC`: 512 px, 1024 views) it
measures
  - examples per second in one process (after a warm-up slice), wall and
    CPU time, against the 0.189 examples/s the separable-footprint simulator
    made at 512 px (bench/results/simulate_bench.json before 2026-12-02);
  - examples per second with a pool of --processes workers (start-up
    included, as a builder pays it);
  - the full-dose noise per kernel of adult abdomens (liver, spleen, muscle)
    and of adult chests (muscle), 0.75 mm pixels, 3 mm slices;
  - with --build: the TFDS build of 'ldct_iqa_synthetic/clinical' (all
    splits) with --processes workers into a temporary folder: wall time, CPU
    seconds of all processes (CPU / processes estimates the wall time on idle
    cores), size on disk, the pixel spacings, and the labels: histogram per
    split, mean per view count, dose, kernel and slice thickness.
Prints a summary and writes bench/results/simulate_bench.json. The load
average is recorded: other jobs on a shared machine inflate wall times.

  PYTHONPATH=. python bench/simulate_bench.py --slices=16 [--nobuild]
"""
import dataclasses
import multiprocessing
import os
import resource
import subprocess
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

import bench_common
from mdiqa_jax.data import synthetic

_SLICES = flags.DEFINE_integer(
    'slices', 16, 'Rendered slices timed per measurement (each makes '
    'degradations_per_slice examples).')
_PROCESSES = flags.DEFINE_integer('processes', 2, 'Pool size.')
_BUILD = flags.DEFINE_bool('build', True, 'Also build the whole dataset.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results',
                           'simulate_bench.json'), 'JSON file to write.')

# The 512-px rate of the previous simulator (separable-footprint projector,
# pixel-driven FBP), measured on this machine: examples/s, one process.
_OLD_EXAMPLES_PER_SECOND = 0.189
_HISTOGRAM_EDGES = (0.0, 0.8, 1.6, 2.4, 3.2, 4.01)


def _generate(task):
  """Pool worker: the examples of one rendered slice, and its CPU seconds."""
  spec, patient_index = task
  start = time.process_time()
  examples = synthetic.generate_slice(spec, 'train', patient_index, 0)
  return [example for _, example in examples], time.process_time() - start


def _rates(spec, num_slices):
  """Examples/s in one process (wall, CPU) and in a pool (wall)."""
  _generate((spec, num_slices))  # Warm-up: imports, caches.
  wall, cpu = time.perf_counter(), time.process_time()
  for index in range(num_slices):
    _generate((spec, index))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  examples = num_slices * spec.degradations_per_slice
  start = time.perf_counter()
  with multiprocessing.get_context('spawn').Pool(_PROCESSES.value) as pool:
    pooled = pool.map(_generate, [(spec, index) for index in range(num_slices)],
                      chunksize=1)
  pooled_wall = time.perf_counter() - start
  return {
      'examples_per_second_single_process': round(examples / wall, 3),
      'examples_per_second_single_process_cpu': round(examples / cpu, 3),
      f'examples_per_second_{_PROCESSES.value}_processes': round(
          examples / pooled_wall, 3),
      'speedup_single_process_vs_old': round(
          examples / wall / _OLD_EXAMPLES_PER_SECOND, 1),
      'cpu_seconds_per_rendered_slice': round(
          float(np.mean([seconds for _, seconds in pooled])), 3),
      'examples_timed': examples,
  }


def _noise_per_kernel(spec, thorax_fraction, num_slices=4):
  """Full-dose, full-view noise (HU) per kernel of adult patients at 0.75 mm
  and 3 mm, in the raters' ROI (an abdomen's liver, spleen and muscle; a
  chest's muscle): abdomens with thorax_fraction 0, chests with 1."""
  fixed = dataclasses.replace(spec, pixel_mm_range=(0.75, 0.75),
                              small_patient_fraction=0.0, thorax_fraction=thorax_fraction)
  noise = {kernel: [] for kernel in spec.kernels}
  for index in range(num_slices):
    degradations = tuple(synthetic.Degradation(1.0, spec.num_views_full,
                                               kernel, 3.0)
                         for kernel in spec.kernels)
    for kernel, scan in zip(spec.kernels, synthetic.simulate_scans(
        fixed, 'validation', index, 0, degradations)):
      noise[kernel].append(scan.measurements.noise_hu)
  return {kernel: round(float(np.mean(values)), 1)
          for kernel, values in noise.items()}


def _histogram(scores):
  counts, edges = np.histogram(scores, bins=_HISTOGRAM_EDGES)
  return {f'{low:.1f}-{min(high, 4.0):.1f}': int(count)
          for low, high, count in zip(edges[:-1], edges[1:], counts)}


def _mean_by(scores, values):
  """Mean label per distinct value of a feature (bytes decoded, floats
  rounded), as {str(value): mean}."""
  keys = [v.decode() if isinstance(v, bytes) else round(float(v), 4)
          for v in values]
  return {str(key): round(float(np.mean([s for s, k in zip(scores, keys)
                                         if k == key])), 2)
          for key in sorted(set(keys))}


def _build(processes):
  """Builds the default dataset into a temporary folder; its costs and labels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mdiqa_jax.data import synthetic_builder  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as data_dir:
    cpu_before = (resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN))
    start = time.perf_counter()
    builder = synthetic_builder.LdctIqaSynthetic(data_dir=data_dir,
                                                 num_processes=processes)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    wall = time.perf_counter() - start
    cpu_after = (resource.getrusage(resource.RUSAGE_SELF),
                 resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = sum(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
              for before, after in zip(cpu_before, cpu_after))
    size = int(subprocess.run(['du', '-sb', data_dir], capture_output=True,
                              text=True, check=True).stdout.split()[0])
    splits, examples = {}, []
    for split in builder.info.splits:
      source = builder.as_data_source(split)
      split_examples = [source[i] for i in range(len(source))]
      scores = np.array([float(e['score']) for e in split_examples])
      examples.extend(split_examples)
      splits[split] = {'examples': len(source), 'label_histogram': _histogram(scores),
                       'label_mean': round(float(scores.mean()), 3)}
  scores = np.array([float(e['score']) for e in examples])
  pixel_mm = np.array([float(e['pixel_mm']) for e in examples])
  return {
      'dataset': f'ldct_iqa_synthetic/{builder.builder_config.name}',
      'version': str(builder.info.version),
      'processes': processes,
      'wall_seconds': round(wall, 1),
      'cpu_seconds_all_processes': round(cpu, 1),
      'estimated_idle_wall_seconds': round(cpu / processes, 1),
      'size_on_disk_mb': round(size / 1e6, 1),
      'examples': len(examples),
      'label_histogram': _histogram(scores),
      'label_mean': round(float(scores.mean()), 3),
      'label_mean_by': {
          feature: _mean_by(scores, [e[feature] for e in examples])
          for feature in ('views', 'dose_fraction', 'kernel',
                          'slice_thickness_mm')},
      'pixel_mm_percentiles_0_10_50_90_100': [
          round(float(v), 3) for v in np.percentile(pixel_mm, [0, 10, 50, 90, 100])],
      'splits': splits,
  }


def main(argv):
  del argv
  spec = synthetic.CLINICAL_SPEC
  results = {
      'machine': {**bench_common.machine_info(),
                  'load_average_1min_at_start': os.getloadavg()[0]},
      'spec': {'image_size': spec.image_size,
               'num_views_full': spec.num_views_full,
               'pixel_mm_range': list(spec.pixel_mm_range),
               'degradations_per_slice': spec.degradations_per_slice,
               'split_sizes': synthetic.split_sizes(spec)},
      'old_examples_per_second_single_process_512px': _OLD_EXAMPLES_PER_SECOND,
  }
  results['clinical'] = _rates(spec, _SLICES.value)
  results['clinical']['full_dose_liver_noise_hu_0.75mm_3mm'] = _noise_per_kernel(spec, 0.0)
  results['clinical']['full_dose_chest_muscle_noise_hu_0.75mm_3mm'] = _noise_per_kernel(spec, 1.0)
  if _BUILD.value:
    results['build'] = _build(_PROCESSES.value)
  results['machine']['load_average_1min_at_end'] = os.getloadavg()[0]
  bench_common.write_results(_OUTPUT.value, results)
  print(results)


if __name__ == '__main__':
  app.run(main)
