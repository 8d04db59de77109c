"""TFDS builder `ldct_iqa_synthetic`: the simulated LDCT quality dataset.

Each example is one simulated slice (`synthetic.generate_example`): a digital
abdominal phantom scanned at one degradation level (dose fraction, view
count), reconstructed, windowed to [0, 1], and scored by simulated
radiologists. Examples are a pure function of (spec, split, index), so a build
is deterministic from the spec's seed, whatever the number of processes.

Builder configs (`tfds.builder('ldct_iqa_synthetic/<config>')`):
  small (default): `synthetic.SMALL_SPEC`, sized to build in minutes on 2 CPU
    cores (bench/pipeline_bench.py measures it).
  challenge: `synthetic.CHALLENGE_SPEC`, 512 x 512 and the challenge's sizes.
Any other `SyntheticSpec` can be built by passing
`SyntheticConfig(name=..., spec=...)` as `config=` (tests use a tiny one).

Splits: train / validation / test (labeled) and unlabeled (for
semi-supervised training), patient-disjoint, sizes `synthetic.split_sizes`
(a spec may leave a split out or empty; it is then absent).
The unlabeled split keeps its simulated labels so that pseudo-label quality
can be measured; training code must read only its images.

Features: image (S, S, 1) float32 in [0, 1]; score float32 (mean of the
raters, 0-4); rater_scores (R,) float32; dose_fraction float32 (1 = full
dose); views int32 (projections; the full count when not sparse); patient_id
text; slice_index int32.
"""
import dataclasses
import multiprocessing
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from mdiqa_jax.data import synthetic


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """A builder config carrying the simulation spec it builds."""
  spec: Optional[synthetic.SyntheticSpec] = None


def _generate(task: tuple[synthetic.SyntheticSpec, str, int]):
  """Pool worker: one example (top level, so 'spawn' processes can run it)."""
  spec, split, index = task
  return synthetic.generate_example(spec, split, index)


def _available_cpus() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
      os.cpu_count() or 1)


class LdctIqaSynthetic(tfds.core.GeneratorBasedBuilder):
  """Simulated low-dose CT slices with simulated radiologist scores."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Physics-based phantoms, Poisson noise, sparse '
                            'views, FBP, simulated raters.'}
  BUILDER_CONFIGS = [
      SyntheticConfig(name='small', spec=synthetic.SMALL_SPEC,
                      description='CPU-sized default.'),
      SyntheticConfig(name='challenge', spec=synthetic.CHALLENGE_SPEC,
                      description='512 x 512, challenge-sized splits.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'small'

  def __init__(self, *, file_format='array_record',
               num_processes: Optional[int] = None, **kwargs):
    """Args beyond tfds': num_processes generating examples (default: CPUs)."""
    # Array records are random-access sources for grain, without TensorFlow.
    super().__init__(file_format=file_format, **kwargs)
    self._num_processes = num_processes or _available_cpus()
    self._pool = None  # Set while building with more than one process.

  @property
  def spec(self) -> synthetic.SyntheticSpec:
    return self.builder_config.spec

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.spec.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{__doc__}\nSpec: {self.spec}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(size, size, 1), dtype=np.float32),
            'score': tfds.features.Scalar(dtype=np.float32),
            'rater_scores': tfds.features.Tensor(
                shape=(self.spec.num_raters,), dtype=np.float32),
            'dose_fraction': tfds.features.Scalar(dtype=np.float32),
            'views': tfds.features.Scalar(dtype=np.int32),
            'patient_id': tfds.features.Text(),
            'slice_index': tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=('image', 'score'),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Generates all splits, with one pool of worker processes for all."""
    num_examples = sum(synthetic.split_sizes(self.spec).values())
    processes = min(self._num_processes, num_examples)
    if processes <= 1:
      return super()._download_and_prepare(dl_manager, download_config)
    # One pool: each worker builds the projection operators once, not once
    # per split. 'spawn': the parent may hold JAX's threads, which fork would
    # copy unsafely.
    with multiprocessing.get_context('spawn').Pool(processes) as pool:
      self._pool = pool
      try:
        return super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._pool = None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download or read: everything is simulated.
    # TFDS cannot write an empty split; a spec may leave a split out.
    return {split: self._generate_examples(split, size)
            for split, size in synthetic.split_sizes(self.spec).items() if size}

  def _generate_examples(self, split: str,
                         num_examples: int) -> Iterator[tuple[str, dict]]:
    tasks = [(self.spec, split, index) for index in range(num_examples)]
    if self._pool is None:
      yield from map(_generate, tasks)
    else:
      # imap yields in task order: the split's contents do not depend on
      # the number of processes.
      yield from self._pool.imap(
          _generate, tasks,
          chunksize=max(1, num_examples // (8 * self._num_processes)))
