"""TFDS builder `ldct_iqa_synthetic`: the simulated LDCT quality dataset.

Each example is one simulated slice (`synthetic.generate_slice`): a digital
abdominal or (a fraction `thorax_fraction` of the patients, 40 % by default)
thoracic phantom at its patient's pixel spacing, scanned at one degradation
level (dose fraction, view count), reconstructed with a random kernel and
slice thickness, windowed, and scored by simulated radiologists. Examples
are a pure function of (spec, split, index), so a build is deterministic
from the spec's seed, whatever the number of processes.

Builder configs (`tfds.builder('ldct_iqa_synthetic/<config>')`):
  clinical (default): `synthetic.CLINICAL_SPEC`, 512 x 512 at 0.6-0.95 mm,
    sized to build in about 2 minutes on 2 idle CPU cores (69 MB).
  challenge: `synthetic.CHALLENGE_SPEC`, the same geometry at the
    challenge's split sizes (1000 / 200 / 300 labeled, 1000 unlabeled).
Any other `SyntheticSpec` can be built by passing
`SyntheticConfig(name=..., spec=...)` as `config=` (tests use a tiny one).

Splits: train / validation / test (labeled) and unlabeled (for
semi-supervised training), patient-disjoint, sizes `synthetic.split_sizes`
(a spec may leave a split out or empty; it is then absent).
The unlabeled split keeps its simulated labels so that pseudo-label quality
can be measured; training code must read only its images.

Features: image (S, S, 1) uint8, the W350/L40 window times 255 rounded
(`intensity.unit_to_uint8`), stored as PNG (encoded by the generating
processes with Pillow and decoded by `as_data_source` with Pillow or OpenCV:
no TensorFlow); pixel_mm float32 (square pixels, mm); slice_thickness_mm
float32; kernel text (`acquisition.FILTERS`); score float32 (mean of the
raters, 0-4); rater_scores (R,) float32; dose_fraction float32 (1 = full
dose); views int32 (projections; the full count when not sparse); patient_id
text; slice_index int32.
"""
import dataclasses
import io
import multiprocessing
import os
from typing import Iterator, Optional

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mdiqa_jax.data import synthetic


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """A builder config carrying the simulation spec it builds."""
  spec: Optional[synthetic.SyntheticSpec] = None


def _png(image: np.ndarray) -> bytes:
  """(H, W, 1) uint8 -> PNG bytes (Pillow; tfds would need TensorFlow)."""
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='png')
  return buffer.getvalue()


def _generate(task: tuple[synthetic.SyntheticSpec, str, int, int]
              ) -> list[tuple[str, dict]]:
  """Pool worker: the examples of one rendered slice, images PNG-encoded
  (top level, so 'spawn' processes can run it)."""
  spec, split, patient_index, slice_index = task
  return [(key, {**example, 'image': _png(example['image'])})
          for key, example in synthetic.generate_slice(
              spec, split, patient_index, slice_index)]


def _available_cpus() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
      os.cpu_count() or 1)


class LdctIqaSynthetic(tfds.core.GeneratorBasedBuilder):
  """Simulated low-dose CT slices with simulated radiologist scores."""

  VERSION = tfds.core.Version('2.2.0')
  RELEASE_NOTES = {
      '1.0.0': 'Physics-based phantoms, Poisson noise, sparse views, FBP, '
               'simulated raters.',
      '2.0.0': 'Clinical geometry: 512 px at 0.6-0.95 mm per patient, 1024 '
               'views, doses down to 5 %, random kernel and slice thickness, '
               'NUFFT projector / FBP; uint8 PNG images; pixel_mm, '
               'slice_thickness_mm and kernel features; config clinical '
               'replaces small.',
      '2.1.0': 'Small patients (30 %, scaled 0.55-0.85) widen the spacing to '
               '0.4-0.95 mm.',
      '2.2.0': 'Thorax phantoms (T6-T8: lungs with vessels and bronchi, heart, '
               'great vessels, ribs, sternum, scapulae) for 40 % of the '
               'patients (SyntheticSpec.thorax_fraction), so that bone, fat '
               'and air-rich chest fields are in the training data; the '
               'abdomens of the other patients are unchanged.',
  }
  BUILDER_CONFIGS = [
      SyntheticConfig(name='clinical', spec=synthetic.CLINICAL_SPEC,
                      description='512 x 512 at clinical spacing, CPU-sized '
                                  'default.'),
      SyntheticConfig(name='challenge', spec=synthetic.CHALLENGE_SPEC,
                      description='Clinical geometry, challenge-sized splits.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'clinical'

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
            'image': tfds.features.Image(shape=(size, size, 1), dtype=np.uint8,
                                         encoding_format='png'),
            'pixel_mm': tfds.features.Scalar(dtype=np.float32),
            'slice_thickness_mm': tfds.features.Scalar(dtype=np.float32),
            'kernel': tfds.features.Text(),
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
    # One pool for all splits (workers start once). 'spawn': the parent may
    # hold JAX's threads, which fork would copy unsafely.
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
    slices = num_examples // self.spec.degradations_per_slice
    tasks = [(self.spec, split, *divmod(rendered, self.spec.slices_per_patient))
             for rendered in range(slices)]
    if self._pool is None:
      results = map(_generate, tasks)
    else:
      # imap yields in task order: the split's contents do not depend on
      # the number of processes.
      results = self._pool.imap(
          _generate, tasks, chunksize=max(1, slices // (8 * self._num_processes)))
    for examples in results:
      yield from examples
