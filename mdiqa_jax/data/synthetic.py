"""The synthetic LDCT-IQA dataset: splits of simulated, rated slices.

Each rendered slice of a simulated patient (`phantoms`) is projected once at
the full view count (`acquisition`), and that projection is degraded
`degradations_per_slice` times, at distinct cells of the degradation grid (a
dose fraction and a view count); each degradation is reconstructed by FBP,
windowed (`intensity.window_to_unit`, stored as uint8) and scored by a panel
of simulated radiologists (`raters`), as LDCTIQAC2023 was made from the Mayo
scans. Each degradation is one example.

Per patient, an anatomy: a fraction `thorax_fraction` are chests at T6-T8
(`phantoms.sample_thorax_patient`: lungs, heart, ribs, scapulae; bone, fat
and air in most of the field, like the chest and neck slices the model must
also score), the others abdomens at L1-L2 (`phantoms.sample_patient`, the
anatomy of the LDCTIQAC2023 scans). Per patient too, a size and the pixel
spacing. Most patients are adult-sized; a fraction `small_patient_fraction`
are small (children, slim adults: every
length scaled by a factor drawn from `small_patient_scale`, rendered as the
adult anatomy on a grid of pixel_mm / scale and projected at the true
pixel_mm, so that line integrals, and so noise, scale with the body). The
spacing is the scanner's field of view fitted to the body width with a
random margin, clipped to `pixel_mm_range`: adults land on the clinical
0.6-0.95 mm of abdominal CT at 512 px, small patients on 0.4-0.6 mm (where
paediatric and head scans lie), so that the model is trained on, and scores
natively, the spacings real scans come at. Per rendered slice, the reconstruction: a kernel
(`acquisition.FILTERS`) and a slice thickness, shared by its degradations
(the same images at two qualities). Photons per detector bin are
proportional to the bin's area (pixel spacing x slice thickness), so the
noise in HU at native pixels follows the physics: thinner slices, smaller
pixels and sharper kernels are noisier.

Every example is a pure function of (spec, split, index) --
`generate_example` -- and the examples of one rendered slice are made
together (`generate_slice`), so a builder can generate slices in any order
and in parallel; patients are drawn from seeds that include the split, so
splits are patient-disjoint.

The 'unlabeled' split (semi-supervised learning) carries its labels like the
others, so that pseudo-labels can be evaluated; training code must not read
them.

Degradation grid: every dose fraction at the full view count, and every
(dose fraction, sparse view count) pair. Sparse scans keep the per-view dose.
A slice's cells are drawn at random without replacement, a full-view cell
being `full_view_weight` times as likely as a sparse-view one (label
histograms in bench/results/simulate_bench.json).
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
# Pixel spacing of clinical abdominal CT at 512 x 512, mm (the range the
# default dataset covers, and the model code's training range).
PIXEL_MM_RANGE = (0.4, 0.95)
# Reconstruction slice thicknesses of clinical abdominal protocols, mm.
SLICE_THICKNESSES_MM = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Everything that determines a synthetic dataset.

  Attributes:
    image_size: N, output side, pixels.
    num_views_full: views of a full scan over 180 degrees; a multiple of
      every sparse view count.
    split_patients: split name -> number of patients.
    slices_per_patient: rendered slices per patient, `slice_spacing_mm`
      apart.
    dose_fractions: dose levels of the grid (1.0 = full dose).
    sparse_views: view counts of the sparse-view cells.
    degradations_per_slice: examples per rendered slice, at distinct grid
      cells (at most the number of cells).
    kernels: reconstruction kernels drawn from (keys of
      acquisition.FILTERS).
    slice_thicknesses_mm: slice thicknesses drawn from, mm.
    pixel_mm_range: (low, high) pixel spacing, mm: the field of view is the
      body width times a margin drawn from `field_of_view_margin`, and the
      spacing it gives is clipped to this range.
    field_of_view_margin: (low, high) of the field of view over the body
      width.
    small_patient_fraction: probability that a patient is small.
    small_patient_scale: (low, high) of a small patient's size over the
      adult phantom's (uniform).
    thorax_fraction: probability that a patient is a chest rather than an
      abdomen. 0.4: the labels' abdominal domain (LDCTIQAC2023) stays the
      majority, while chests, the commonest low-dose CT and the bone, fat
      and air-rich fields a model trained on abdomens alone under-rates
      noise in, are 2 in 5 patients (31 of the clinical spec's 80 training
      patients, 7 of 16 validation, 25 of 64 test). 0 gives the
      abdomen-only datasets of builder versions before 2.2.0.
    num_raters: R, simulated radiologists per image.
    seed: the dataset seed.
    photons_per_mm2: unattenuated photons per view at full dose per mm^2 of
      detector bin (bin width = pixel spacing, times the slice thickness);
      chosen so that a full-dose Hann reconstruction at 0.75 mm and 3 mm
      shows about 12 HU of noise in the liver (a clinical abdomen scan).
    electronic_noise: std of the detector's additive noise, photons.
    slice_spacing_mm: distance between a patient's rendered slices.
    supersample: phantom sub-pixels per edge pixel side.
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
  degradations_per_slice: int = 2
  kernels: tuple[str, ...] = tuple(acquisition.FILTERS)
  slice_thicknesses_mm: tuple[float, ...] = SLICE_THICKNESSES_MM
  pixel_mm_range: tuple[float, float] = PIXEL_MM_RANGE
  field_of_view_margin: tuple[float, float] = (1.08, 1.3)
  small_patient_fraction: float = 0.3
  small_patient_scale: tuple[float, float] = (0.55, 0.85)
  thorax_fraction: float = 0.4
  num_raters: int = 5
  seed: int = 0
  photons_per_mm2: float = 2.6e5
  electronic_noise: float = 3.0
  slice_spacing_mm: float = 7.5
  supersample: int = 3
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
    cells = len(self.dose_fractions) * (1 + len(self.sparse_views))
    if not 1 <= self.degradations_per_slice <= cells:
      raise ValueError(
          f'SyntheticSpec.degradations_per_slice must be in [1, {cells}] '
          f'(the grid cells), got {self.degradations_per_slice}.')
    if not self.kernels or not set(self.kernels) <= set(acquisition.FILTERS):
      raise ValueError(
          f'SyntheticSpec.kernels must be non-empty, from '
          f'{sorted(acquisition.FILTERS)}, got {self.kernels}.')
    if not self.slice_thicknesses_mm or min(self.slice_thicknesses_mm) <= 0:
      raise ValueError('SyntheticSpec.slice_thicknesses_mm must be non-empty '
                       f'and > 0, got {self.slice_thicknesses_mm}.')
    low, high = self.pixel_mm_range
    if not 0 < low <= high:
      raise ValueError('SyntheticSpec.pixel_mm_range must be (low, high) with '
                       f'0 < low <= high, got {self.pixel_mm_range}.')
    low, high = self.field_of_view_margin
    if not 0 < low <= high:
      raise ValueError('SyntheticSpec.field_of_view_margin must be (low, '
                       f'high) with 0 < low <= high, got '
                       f'{self.field_of_view_margin}.')
    low, high = self.small_patient_scale
    if not (0 <= self.small_patient_fraction <= 1 and 0 < low <= high <= 1):
      raise ValueError('SyntheticSpec.small_patient_fraction must be in [0, 1] and '
                       'small_patient_scale (low, high) with 0 < low <= high <= 1, got '
                       f'{self.small_patient_fraction}, {self.small_patient_scale}.')
    if not 0 <= self.thorax_fraction <= 1:
      raise ValueError('SyntheticSpec.thorax_fraction must be in [0, 1], got '
                       f'{self.thorax_fraction}.')
    if self.num_raters < 1:
      raise ValueError(
          f'SyntheticSpec.num_raters must be >= 1, got {self.num_raters}.')
    if not self.full_view_weight > 0:
      raise ValueError('SyntheticSpec.full_view_weight must be > 0, got '
                       f'{self.full_view_weight}.')

  def geometry(self, pixel_mm: float) -> acquisition.Geometry:
    """The scan of a patient with this pixel spacing (mm)."""
    return acquisition.Geometry(image_size=self.image_size,
                                pixel_size_mm=pixel_mm,
                                num_views=self.num_views_full)


# The default: 512 px at 0.6-0.95 mm, 1024 views over 180 degrees (a
# clinical scanner's ~1000 views per rotation; see docs/DATA.md), the
# challenge's sparse scans and doses plus 10 % and 5 %; sized to build in
# about 2 minutes on 2 idle cores (~230 CPU seconds; bench/simulate_bench.py).
CLINICAL_SPEC = SyntheticSpec(
    image_size=512,
    num_views_full=1024,
    split_patients={'train': 80, 'validation': 16, 'test': 64, 'unlabeled': 32},
    slices_per_patient=2,
    dose_fractions=(1.0, 0.75, 0.5, 0.25, 0.1, 0.05),
    sparse_views=(64, 128, 256),
)

# The clinical geometry with LDCTIQAC2023's 1000 / 200 / 300 labeled slices,
# plus 1000 unlabeled.
CHALLENGE_SPEC = dataclasses.replace(
    CLINICAL_SPEC,
    split_patients={'train': 50, 'validation': 10, 'test': 15, 'unlabeled': 50},
    slices_per_patient=10,
)


@dataclasses.dataclass(frozen=True)
class Degradation:
  """How one example is scanned and reconstructed from its rendered slice.

  Attributes:
    dose_fraction: in (0, 1].
    views: num_views_full, or a sparse count dividing it.
    kernel: reconstruction kernel, a key of acquisition.FILTERS.
    slice_thickness_mm: slice thickness, mm (photons per bin scale with it).
  """
  dose_fraction: float
  views: int
  kernel: str
  slice_thickness_mm: float


def split_sizes(spec: SyntheticSpec) -> dict[str, int]:
  """Split name -> number of examples (patients x slices x degradations)."""
  return {split: patients * spec.slices_per_patient * spec.degradations_per_slice
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


def is_thorax(spec: SyntheticSpec, split: str, patient_index: int) -> bool:
  """Whether the patient is a chest (probability spec.thorax_fraction; an
  rng stream of its own, so the other draws do not depend on it;
  deterministic)."""
  # The stream's tag 0xC4E5 keeps the clinical test patients 0-2 (the
  # acquisition tests' abdomen, the docs montage) abdomens.
  rng = np.random.default_rng([spec.seed, _split_code(split), patient_index, 0xC4E5])
  return bool(rng.random() < spec.thorax_fraction)


def make_patient(spec: SyntheticSpec, split: str,
                 patient_index: int) -> phantoms.Patient:
  """The anatomy of patient `patient_index` of `split`: a chest
  (`is_thorax`) or an abdomen (deterministic)."""
  seed = [spec.seed, _split_code(split), patient_index]
  sample = (phantoms.sample_thorax_patient if is_thorax(spec, split, patient_index)
            else phantoms.sample_patient)
  return sample(
      np.random.default_rng(seed), patient_seed=zlib.crc32(repr(seed).encode()),
      z_range_mm=spec.slices_per_patient * spec.slice_spacing_mm)


def patient_pixel_mm(spec: SyntheticSpec, split: str, patient_index: int,
                     patient: phantoms.Patient | None = None) -> float:
  """The patient's pixel spacing, mm: the field of view (body width times a
  margin drawn from spec.field_of_view_margin) over image_size, clipped to
  spec.pixel_mm_range (deterministic)."""
  patient = make_patient(spec, split, patient_index) if patient is None else patient
  rng = np.random.default_rng([spec.seed, _split_code(split), patient_index, 0xF0F])
  field_of_view = (patient_scale(spec, split, patient_index) * patient.body_width_mm *
                   rng.uniform(*spec.field_of_view_margin))
  return float(np.clip(field_of_view / spec.image_size, *spec.pixel_mm_range))


def patient_scale(spec: SyntheticSpec, split: str, patient_index: int) -> float:
  """The patient's size over the adult phantom's: 1, or for a small patient
  (probability spec.small_patient_fraction) uniform in spec.small_patient_scale
  (deterministic)."""
  rng = np.random.default_rng([spec.seed, _split_code(split), patient_index, 0x5CA1E])
  if rng.random() >= spec.small_patient_fraction:
    return 1.0
  return float(rng.uniform(*spec.small_patient_scale))


def render_pixel_mm(spec: SyntheticSpec, split: str, patient_index: int,
                    patient: phantoms.Patient | None = None) -> float:
  """Pixel side on the adult phantom that renders the (scaled) patient at its
  spacing: patient_pixel_mm / patient_scale, mm of the unscaled anatomy."""
  return (patient_pixel_mm(spec, split, patient_index, patient) /
          patient_scale(spec, split, patient_index))


def make_panel(spec: SyntheticSpec) -> tuple[raters.Rater, ...]:
  """The dataset's rater panel (shared by all splits)."""
  return raters.sample_panel(spec.num_raters,
                             np.random.default_rng([spec.seed, 0x7A7E5]))


def slice_z_mm(spec: SyntheticSpec, slice_index: int) -> float:
  return (slice_index - (spec.slices_per_patient - 1) / 2.0) * spec.slice_spacing_mm


def sample_degradations(spec: SyntheticSpec, split: str, patient_index: int,
                        slice_index: int) -> tuple[Degradation, ...]:
  """The slice's `degradations_per_slice` degradations (deterministic):
  distinct grid cells (weighted by full_view_weight), one kernel and one
  slice thickness for all of them."""
  grid = degradation_grid(spec)
  weights = np.array([spec.full_view_weight if views == spec.num_views_full
                      else 1.0 for _, views in grid])
  rng = np.random.default_rng(
      [spec.seed, _split_code(split), patient_index, slice_index, 0xD05E])
  cells = rng.choice(len(grid), size=spec.degradations_per_slice,
                     replace=False, p=weights / weights.sum())
  kernel = str(spec.kernels[rng.integers(len(spec.kernels))])
  thickness = float(spec.slice_thicknesses_mm[
      rng.integers(len(spec.slice_thicknesses_mm))])
  return tuple(Degradation(grid[cell][0], grid[cell][1], kernel, thickness)
               for cell in cells)


@dataclasses.dataclass(frozen=True)
class SimulatedScan:
  """One slice at one degradation, with what the readers measured.

  Attributes:
    example: the dataset example (see `generate_example`).
    image_hu: (N, N) float32 degraded reconstruction, HU.
    reference_hu: (N, N) float32 noise-free full-view reconstruction (same
      kernel), HU.
    phantom_hu: (N, N) float32 the rasterised phantom, HU.
    measurements: what the simulated readers measured.
  """
  example: dict
  image_hu: np.ndarray
  reference_hu: np.ndarray
  phantom_hu: np.ndarray
  measurements: raters.Measurements


def _reconstruct_all(sinograms: list[tuple[np.ndarray, str]],
                     geometry: acquisition.Geometry) -> list[np.ndarray]:
  """FBP (HU) of (sinogram, kernel) pairs, those with the same views in one
  call (one NUFFT with several transforms)."""
  images = [None] * len(sinograms)
  by_views = {}
  for position, (sinogram, _) in enumerate(sinograms):
    by_views.setdefault(sinogram.shape[0], []).append(position)
  for positions in by_views.values():
    stack = acquisition.filtered_backprojection(
        np.stack([sinograms[p][0] for p in positions]), geometry,
        filter_name=[sinograms[p][1] for p in positions])
    for position, image in zip(positions, stack):
      images[position] = intensity.attenuation_to_hu(image)
  return images


def simulate_scans(spec: SyntheticSpec, split: str, patient_index: int,
                   slice_index: int, degradations: tuple[Degradation, ...],
                   panel: tuple[raters.Rater, ...] | None = None
                   ) -> list[SimulatedScan]:
  """Scans one rendered slice at several degradations and has them rated.

  The slice is rendered and projected once; the noise-free reconstructions
  the raters compare against are shared where kernels and views agree.

  Args:
    spec: the dataset.
    split: split name (part of the patient's seed).
    patient_index: patient within the split.
    slice_index: slice within the patient.
    degradations: the scans to make (`sample_degradations` for the
      dataset's).
    panel: the raters (default `make_panel(spec)`).

  Returns:
    One SimulatedScan per degradation (deterministic: its noise and the
    raters' draws depend on all arguments).
  """
  panel = make_panel(spec) if panel is None else panel
  patient = make_patient(spec, split, patient_index)
  pixel_mm = patient_pixel_mm(spec, split, patient_index, patient)
  geometry = spec.geometry(pixel_mm)
  slice_ = phantoms.render_slice(
      patient, slice_z_mm(spec, slice_index), image_size=spec.image_size,
      pixel_size_mm=render_pixel_mm(spec, split, patient_index, patient),
      supersample=spec.supersample)
  full_sinogram = acquisition.forward_project(
      intensity.hu_to_attenuation(slice_.hu), geometry)

  # Everything to reconstruct, without repeats: (views, kernel, noisy-or-not).
  requests, rngs = {}, []
  for degradation in degradations:
    views, kernel = degradation.views, degradation.kernel
    rng = np.random.default_rng([
        spec.seed, _split_code(split), patient_index, slice_index,
        int(round(degradation.dose_fraction * 1e6)), views,
        int(round(degradation.slice_thickness_mm * 1e3)),
        zlib.crc32(kernel.encode())])
    rngs.append(rng)
    sinogram = full_sinogram[acquisition.view_indices(spec.num_views_full, views)]
    requests[degradation] = (acquisition.noisy_line_integrals(
        sinogram, photons_per_bin=spec.photons_per_mm2 * pixel_mm *
        degradation.slice_thickness_mm,
        dose_fraction=degradation.dose_fraction,
        electronic_noise=spec.electronic_noise, rng=rng), kernel)
    requests[views, kernel] = (sinogram, kernel)
    requests[spec.num_views_full, kernel] = (full_sinogram, kernel)
  images = dict(zip(requests, _reconstruct_all(list(requests.values()),
                                               geometry)))

  scans = []
  for degradation, rng in zip(degradations, rngs):
    image_hu = images[degradation]
    reference_hu = images[spec.num_views_full, degradation.kernel]
    measurements = raters.measure(
        image_hu, images[degradation.views, degradation.kernel], reference_hu,
        slice_)
    rater_scores = raters.rate(measurements, panel, rng)
    example = {
        'image': intensity.unit_to_uint8(intensity.window_to_unit(
            image_hu, spec.window_width, spec.window_level))[..., None],
        'score': np.float32(rater_scores.mean()),
        'rater_scores': rater_scores,
        'dose_fraction': np.float32(degradation.dose_fraction),
        'views': np.int32(degradation.views),
        'pixel_mm': np.float32(pixel_mm),
        'slice_thickness_mm': np.float32(degradation.slice_thickness_mm),
        'kernel': degradation.kernel,
        'patient_id': patient_id(split, patient_index),
        'slice_index': np.int32(slice_index),
    }
    scans.append(SimulatedScan(
        example=example, image_hu=image_hu.astype(np.float32),
        reference_hu=reference_hu.astype(np.float32), phantom_hu=slice_.hu,
        measurements=measurements))
  return scans


def simulate_scan(spec: SyntheticSpec, split: str, patient_index: int,
                  slice_index: int, dose_fraction: float, views: int,
                  panel: tuple[raters.Rater, ...] | None = None, *,
                  kernel: str | None = None,
                  slice_thickness_mm: float | None = None) -> SimulatedScan:
  """One slice at one (dose, views) cell (`simulate_scans`); the kernel and
  thickness default to the ones the dataset draws for the slice."""
  drawn = sample_degradations(spec, split, patient_index, slice_index)[0]
  degradation = Degradation(
      float(dose_fraction), int(views), drawn.kernel if kernel is None else kernel,
      drawn.slice_thickness_mm if slice_thickness_mm is None else
      float(slice_thickness_mm))
  return simulate_scans(spec, split, patient_index, slice_index,
                        (degradation,), panel)[0]


def _locate(spec: SyntheticSpec, split: str, index: int) -> tuple[int, int, int]:
  """(patient, slice, degradation) of example `index` of `split`."""
  if split not in spec.split_patients:
    raise ValueError(f'Unknown split {split!r}; the spec has '
                     f'{sorted(spec.split_patients)}.')
  size = split_sizes(spec)[split]
  if not 0 <= index < size:
    raise ValueError(f'Example index {index} out of range for split {split!r} '
                     f'of {size} examples.')
  rendered, degradation = divmod(index, spec.degradations_per_slice)
  patient_index, slice_index = divmod(rendered, spec.slices_per_patient)
  return patient_index, slice_index, degradation


def generate_slice(spec: SyntheticSpec, split: str, patient_index: int,
                   slice_index: int) -> list[tuple[str, dict]]:
  """The examples of one rendered slice, in index order (one projection).

  Returns:
    [(key, example)] * degradations_per_slice: key
    '<patient_id>-<slice>-<degradation>' unique in the split; example
    {'image': (N, N, 1) uint8, the W/L-windowed slice times 255 rounded,
    'score': float32 mean of the rater scores (0..4), 'rater_scores': (R,)
    float32 integers 0..4, 'dose_fraction': float32 (1.0 = full dose),
    'views': int32 (num_views_full when not sparse), 'pixel_mm': float32
    (square pixels), 'slice_thickness_mm': float32, 'kernel': str,
    'patient_id': str, 'slice_index': int32}.
  """
  scans = simulate_scans(spec, split, patient_index, slice_index,
                         sample_degradations(spec, split, patient_index,
                                             slice_index))
  return [(f'{patient_id(split, patient_index)}-{slice_index:03d}-{d}',
           scan.example) for d, scan in enumerate(scans)]


def generate_example(spec: SyntheticSpec, split: str,
                     index: int) -> tuple[str, dict]:
  """Example `index` of `split` (a pure function of its arguments; see
  `generate_slice` for the fields)."""
  patient_index, slice_index, degradation = _locate(spec, split, index)
  return generate_slice(spec, split, patient_index, slice_index)[degradation]


def generate_split(spec: SyntheticSpec, split: str) -> Iterator[tuple[str, dict]]:
  """All examples of a split, in index order (see `generate_slice`)."""
  for rendered in range(split_sizes(spec)[split] // spec.degradations_per_slice):
    yield from generate_slice(spec, split, *divmod(rendered,
                                                   spec.slices_per_patient))
