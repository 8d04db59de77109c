"""The synthetic LDCT-IQA dataset: splits of simulated, rated slices.

Each example is one slice of a simulated patient (`phantoms`), scanned at one
cell of the degradation grid (`acquisition`: a dose fraction and a view
count), reconstructed by FBP, windowed to [0, 1] (`intensity.window_to_unit`)
and scored by a panel of simulated radiologists (`raters`), as LDCTIQAC2023
was made from the Mayo scans. Every example is a pure function of
(spec, split, index) -- `generate_example` -- so a builder can generate
examples in any order and in parallel; patients are drawn from seeds that
include the split, so splits are patient-disjoint.

The 'unlabeled' split (semi-supervised learning) carries its labels like the
others, so that pseudo-labels can be evaluated; training code must not read
them.

Degradation grid: every dose fraction at the full view count, and every
(dose fraction, sparse view count) pair. Sparse scans keep the per-view dose.
A slice's cell is drawn at random, a full-view cell being `full_view_weight`
times as likely as a sparse-view one: each sparse view count fills about one
Likert point of the label range (16 / 32 / 64 views at 128 px: ~0-0.8 /
0.8-1.6 / 1.6-2.4) while the full-view cells span ~2.4-4, so the default
weight 2 spreads the labels about evenly over 0..4 (uniform cells put half
the sparse examples near 0; histograms in bench/results/simulate_bench.json).
"""
import dataclasses
import zlib
from typing import Iterator

import numpy as np

from mdiqa_jax.data import acquisition
from mdiqa_jax.data import intensity
from mdiqa_jax.data import phantoms
from mdiqa_jax.data import raters

SPLITS = ('train', 'validation', 'test', 'unlabeled')


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Everything that determines a synthetic dataset.

  Attributes:
    image_size: output side, pixels (the field of view is fixed, so this
      sets the pixel size).
    num_views_full: views of a full scan over 180 degrees; a multiple of
      every sparse view count.
    split_patients: split name -> number of patients.
    slices_per_patient: slices per patient, `slice_spacing_mm` apart.
    dose_fractions: dose levels of the grid (1.0 = full dose).
    sparse_views: view counts of the sparse-view cells.
    num_raters: R, simulated radiologists per image.
    seed: the dataset seed.
    field_of_view_mm: side of the image, mm.
    photons_per_bin: I0, unattenuated photons per detector bin and view at
      full dose; chosen per image size so that full-dose noise in the liver
      is about 10-15 HU (what a clinical abdomen scan shows).
    electronic_noise: std of the detector's additive noise, photons.
    filter_name: FBP filter, 'hann' or 'ramp'.
    slice_spacing_mm: distance between a patient's slices.
    supersample: phantom sub-pixels per pixel side.
    full_view_weight: sampling weight of a full-view grid cell relative to a
      sparse-view cell.
    window_width: display window width, HU.
    window_level: display window level, HU.
  """
  image_size: int
  num_views_full: int
  split_patients: dict[str, int]
  slices_per_patient: int
  dose_fractions: tuple[float, ...]
  sparse_views: tuple[int, ...]
  num_raters: int = 5
  seed: int = 0
  field_of_view_mm: float = 384.0
  photons_per_bin: float = 1e5
  electronic_noise: float = 3.0
  filter_name: str = 'hann'
  slice_spacing_mm: float = 7.5
  supersample: int = 2
  full_view_weight: float = 2.0
  window_width: float = intensity.WINDOW_WIDTH_HU
  window_level: float = intensity.WINDOW_LEVEL_HU

  def __post_init__(self):
    for split, count in self.split_patients.items():
      if split not in SPLITS or count < 0:
        raise ValueError(
            f'SyntheticSpec.split_patients: expected splits from {SPLITS} '
            f'with counts >= 0, got {split!r}: {count}.')
    if self.slices_per_patient < 1:
      raise ValueError('SyntheticSpec.slices_per_patient must be >= 1, got '
                       f'{self.slices_per_patient}.')
    if not self.dose_fractions or not all(
        0.0 < dose <= 1.0 for dose in self.dose_fractions):
      raise ValueError('SyntheticSpec.dose_fractions must be non-empty, in '
                       f'(0, 1], got {self.dose_fractions}.')
    for views in self.sparse_views:
      if not 0 < views < self.num_views_full or self.num_views_full % views:
        raise ValueError(
            f'SyntheticSpec.sparse_views: {views} must be below and divide '
            f'num_views_full ({self.num_views_full}).')
    if self.num_raters < 1:
      raise ValueError(
          f'SyntheticSpec.num_raters must be >= 1, got {self.num_raters}.')
    if not self.full_view_weight > 0:
      raise ValueError('SyntheticSpec.full_view_weight must be > 0, got '
                       f'{self.full_view_weight}.')

  @property
  def geometry(self) -> acquisition.Geometry:
    return acquisition.Geometry(
        image_size=self.image_size,
        pixel_size_mm=self.field_of_view_mm / self.image_size,
        num_views=self.num_views_full)


# 128 px at 3 mm; views scaled from the challenge by 128/512, so that a
# sparse scan undersamples the 128-px image as 64/128/256 views undersample
# a 512-px one.
SMALL_SPEC = SyntheticSpec(
    image_size=128,
    num_views_full=256,
    split_patients={'train': 80, 'validation': 20, 'test': 30, 'unlabeled': 40},
    slices_per_patient=8,
    dose_fractions=(1.0, 0.75, 0.5, 0.25),
    sparse_views=(16, 32, 64),
    photons_per_bin=1e5,
    supersample=3,
)

# 512 px at 0.75 mm; 1000 / 200 / 300 labeled slices as in LDCTIQAC2023,
# plus 1000 unlabeled.
CHALLENGE_SPEC = SyntheticSpec(
    image_size=512,
    num_views_full=1024,
    split_patients={'train': 100, 'validation': 20, 'test': 30, 'unlabeled': 100},
    slices_per_patient=10,
    dose_fractions=(1.0, 0.75, 0.5, 0.25),
    sparse_views=(64, 128, 256),
    photons_per_bin=3.7e5,
    supersample=2,
)


def split_sizes(spec: SyntheticSpec) -> dict[str, int]:
  """Split name -> number of examples (patients x slices per patient)."""
  return {split: patients * spec.slices_per_patient
          for split, patients in spec.split_patients.items()}


def degradation_grid(spec: SyntheticSpec) -> list[tuple[float, int]]:
  """The (dose_fraction, views) cells: full-view cells first, then sparse."""
  full = [(float(dose), spec.num_views_full) for dose in spec.dose_fractions]
  sparse = [(float(dose), int(views)) for views in spec.sparse_views
            for dose in spec.dose_fractions]
  return full + sparse


def _split_code(split: str) -> int:
  # Python's hash() is salted per process; crc32 is stable.
  return zlib.crc32(split.encode('utf-8'))


def patient_id(split: str, patient_index: int) -> str:
  return f'{split}-{patient_index:05d}'


def make_patient(spec: SyntheticSpec, split: str,
                 patient_index: int) -> phantoms.Patient:
  """The anatomy of patient `patient_index` of `split` (deterministic)."""
  seed = [spec.seed, _split_code(split), patient_index]
  return phantoms.sample_patient(
      np.random.default_rng(seed), patient_seed=zlib.crc32(repr(seed).encode()),
      z_range_mm=spec.slices_per_patient * spec.slice_spacing_mm)


def make_panel(spec: SyntheticSpec) -> tuple[raters.Rater, ...]:
  """The dataset's rater panel (shared by all splits)."""
  return raters.sample_panel(spec.num_raters,
                             np.random.default_rng([spec.seed, 0x7A7E5]))


def slice_z_mm(spec: SyntheticSpec, slice_index: int) -> float:
  return (slice_index - (spec.slices_per_patient - 1) / 2.0) * spec.slice_spacing_mm


@dataclasses.dataclass(frozen=True)
class SimulatedScan:
  """One slice at one degradation, with what the readers measured.

  Attributes:
    example: the dataset example (see `generate_example`).
    image_hu: (N, N) float32 degraded reconstruction, HU.
    reference_hu: (N, N) float32 noise-free full-view reconstruction, HU.
    phantom_hu: (N, N) float32 the rasterised phantom, HU.
    measurements: what the simulated readers measured.
  """
  example: dict
  image_hu: np.ndarray
  reference_hu: np.ndarray
  phantom_hu: np.ndarray
  measurements: raters.Measurements


def simulate_scan(spec: SyntheticSpec, split: str, patient_index: int,
                  slice_index: int, dose_fraction: float, views: int,
                  panel: tuple[raters.Rater, ...] | None = None) -> SimulatedScan:
  """Scans one slice at one degradation and has it rated (deterministic).

  Args:
    spec: the dataset.
    split: split name (part of the patient's seed).
    patient_index: patient within the split.
    slice_index: slice within the patient.
    dose_fraction: in (0, 1].
    views: spec.num_views_full, or a count dividing it.
    panel: the raters (default `make_panel(spec)`).

  Returns:
    SimulatedScan; its noise and the raters' draws depend on all arguments.
  """
  geometry = spec.geometry
  panel = make_panel(spec) if panel is None else panel
  patient = make_patient(spec, split, patient_index)
  slice_ = phantoms.render_slice(
      patient, slice_z_mm(spec, slice_index), image_size=spec.image_size,
      pixel_size_mm=geometry.pixel_size_mm, supersample=spec.supersample)
  full_sinogram = acquisition.forward_project(
      intensity.hu_to_attenuation(slice_.hu), geometry)
  sinogram = full_sinogram[acquisition.view_indices(spec.num_views_full, views)]
  rng = np.random.default_rng([
      spec.seed, _split_code(split), patient_index, slice_index,
      int(round(dose_fraction * 1e6)), views])
  noisy = acquisition.noisy_line_integrals(
      sinogram, photons_per_bin=spec.photons_per_bin,
      dose_fraction=dose_fraction, electronic_noise=spec.electronic_noise,
      rng=rng)

  def reconstruct(sinograms):
    return intensity.attenuation_to_hu(acquisition.filtered_backprojection(
        np.stack(sinograms), geometry, filter_name=spec.filter_name))

  if views == spec.num_views_full:
    image_hu, reference_hu = reconstruct([noisy, full_sinogram])
    noiseless_hu = reference_hu
  else:
    image_hu, noiseless_hu = reconstruct([noisy, sinogram])
    reference_hu, = reconstruct([full_sinogram])
  measurements = raters.measure(image_hu, noiseless_hu, reference_hu, slice_)
  rater_scores = raters.rate(measurements, panel, rng)
  example = {
      'image': intensity.window_to_unit(
          image_hu, spec.window_width, spec.window_level)[..., None],
      'score': np.float32(rater_scores.mean()),
      'rater_scores': rater_scores,
      'dose_fraction': np.float32(dose_fraction),
      'views': np.int32(views),
      'patient_id': patient_id(split, patient_index),
      'slice_index': np.int32(slice_index),
  }
  return SimulatedScan(example=example, image_hu=image_hu.astype(np.float32),
                       reference_hu=reference_hu.astype(np.float32),
                       phantom_hu=slice_.hu, measurements=measurements)


def sample_degradation(spec: SyntheticSpec, split: str, patient_index: int,
                       slice_index: int) -> tuple[float, int]:
  """The grid cell a slice is scanned at (deterministic)."""
  grid = degradation_grid(spec)
  weights = np.array([spec.full_view_weight if views == spec.num_views_full
                      else 1.0 for _, views in grid])
  rng = np.random.default_rng(
      [spec.seed, _split_code(split), patient_index, slice_index, 0xD05E])
  return grid[int(rng.choice(len(grid), p=weights / weights.sum()))]


def generate_example(spec: SyntheticSpec, split: str,
                     index: int) -> tuple[str, dict]:
  """Example `index` of `split` (a pure function of its arguments).

  Returns:
    (key, example): key '<patient_id>-<slice>' unique in the split; example
    {'image': (N, N, 1) float32 in [0, 1] (windowed), 'score': float32 mean
    of the rater scores (0..4), 'rater_scores': (R,) float32 integers 0..4,
    'dose_fraction': float32 (1.0 = full dose), 'views': int32
    (num_views_full when not sparse), 'patient_id': str, 'slice_index':
    int32}.
  """
  if split not in spec.split_patients:
    raise ValueError(f'Unknown split {split!r}; the spec has '
                     f'{sorted(spec.split_patients)}.')
  size = split_sizes(spec)[split]
  if not 0 <= index < size:
    raise ValueError(f'Example index {index} out of range for split {split!r} '
                     f'of {size} examples.')
  patient_index, slice_index = divmod(index, spec.slices_per_patient)
  dose_fraction, views = sample_degradation(spec, split, patient_index,
                                            slice_index)
  scan = simulate_scan(spec, split, patient_index, slice_index, dose_fraction,
                       views)
  return f'{scan.example["patient_id"]}-{slice_index:03d}', scan.example


def generate_split(spec: SyntheticSpec, split: str) -> Iterator[tuple[str, dict]]:
  """All examples of a split, in index order (see `generate_example`)."""
  for index in range(split_sizes(spec)[split]):
    yield generate_example(spec, split, index)
