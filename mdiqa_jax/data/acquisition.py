"""Parallel-beam CT acquisition: projection, dose and view reduction, FBP.

Geometry (`Geometry`): a square image of `image_size` x `image_size` square
pixels of side `pixel_size_mm`, centred on the rotation axis; a straight
detector of `num_detectors` bins of the same width as a pixel, long enough
(> image diagonal) that every ray through the image is measured; `num_views`
parallel projections equally spaced over [0, pi). Sparse-view scans keep an
evenly strided subset of those angles, so `num_views` must be a multiple of
every sparse view count.

Image coordinates: pixel (row i, column j) has its centre at
x = (j - (N - 1) / 2) * pixel, y = ((N - 1) / 2 - i) * pixel (mm); the ray of
view angle theta and detector position t is {x cos(theta) + y sin(theta) = t}.

Projector: the image is taken as piecewise constant on its pixels (the
phantom rasteriser area-averages each pixel), and each detector reading is
the line integral of that image averaged over the bin width. A square
pixel's projection at angle theta is a trapezoid (the convolution of two boxes
of widths pixel*|cos| and pixel*|sin|), whose bin average has a closed form
(the "separable footprint" projector, Long, Fessler & Balter 2010; unlike a
pixel-driven projector it has no moire at 45 degrees). It is applied as a
histogram of pixel positions on a 1/16-bin grid convolved with that
footprint, which costs about as much as a pixel-driven projector.

Reconstruction: filtered back-projection, the textbook discretisation
(Kak & Slaney ch. 3): band-limited ramp kernel applied by zero-padded FFT,
optionally apodised by a Hann window (smoother noise, like a clinical
soft-tissue kernel), then pixel-driven back-projection with linear
interpolation between bins, times pi / num_views.

Noise: each bin of each view receives Poisson photon counts with mean
I0 * dose_fraction * exp(-line_integral), plus zero-mean Gaussian electronic
noise; counts below `min_counts` are clamped before the log (what a
scanner's pre-processing does against log(0) in photon-starved rays).
Sparse views keep the per-view dose, so a sparse scan also delivers fewer
photons in total.

Both operators work on chunks of views, so memory stays bounded at any
image size; small ones (the 128-pixel datasets) are kept per process as
sparse matrices, built from the same closed-form entries, and reused across
slices.
"""
import dataclasses
import functools
import math

import numpy as np
from scipy import sparse

# Sub-bin samples per detector bin of the projector's pixel histogram.
_SUB_BINS = 16
# Footprint kernel half-width in sub-bins: a pixel's footprint (<= sqrt(2)
# bins) averaged over a bin reaches (sqrt(2) + 1) / 2 < 1.25 bins from it.
_KERNEL_HALF_WIDTH = 20
# Pixel-views per chunk of views (bounds the temporaries, ~100 MB).
_CHUNK_ELEMENTS = 1_500_000
# Operators with at most this many non-zeros (float32 weights + int32
# indices) are built once per process as sparse matrices (~170 MB for the
# 128-pixel, 256-view scan) and reused across slices; larger ones (512
# pixels) are applied chunk by chunk without being stored.
_MAX_CACHED_NONZEROS = 24_000_000


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Parallel-beam scan of a square image.

  Attributes:
    image_size: N, pixels per side of the image grid.
    pixel_size_mm: side of a pixel, mm (also the detector bin width).
    num_views: views of a full scan, equally spaced over [0, pi).
  """
  image_size: int
  pixel_size_mm: float
  num_views: int

  def __post_init__(self):
    if self.image_size < 8:
      raise ValueError(f'Geometry.image_size must be >= 8, got {self.image_size}.')
    if not self.pixel_size_mm > 0:
      raise ValueError(
          f'Geometry.pixel_size_mm must be > 0, got {self.pixel_size_mm}.')
    if self.num_views < 1:
      raise ValueError(f'Geometry.num_views must be >= 1, got {self.num_views}.')

  @property
  def num_detectors(self) -> int:
    """Bins: the even count just above the image diagonal, plus a margin."""
    return 2 * math.ceil(self.image_size * math.sqrt(2.0) / 2.0) + 2


def view_indices(num_views_full: int, num_views: int) -> np.ndarray:
  """Indices into the full scan's views of an evenly strided sparse scan.

  Returns:
    (num_views,) int64: 0, stride, 2 * stride, ... with
    stride = num_views_full // num_views.
  """
  if num_views < 1 or num_views_full % num_views:
    raise ValueError(
        f'A sparse scan needs num_views ({num_views}) dividing the full '
        f'scan\'s num_views ({num_views_full}).')
  return np.arange(0, num_views_full, num_views_full // num_views)


def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(N*N,) x and y of pixel centres in pixel units, row-major."""
  centre = (image_size - 1) / 2.0
  rows, cols = np.meshgrid(np.arange(image_size), np.arange(image_size),
                           indexing='ij')
  return (cols.ravel() - centre), (centre - rows.ravel())


def _ramp_integral2(u: np.ndarray) -> np.ndarray:
  """Second antiderivative of the unit step: max(u, 0)^2 / 2."""
  return 0.5 * np.square(np.maximum(u, 0.0))


def _footprint_kernel(theta: np.ndarray) -> np.ndarray:
  """Bin-averaged footprint of a unit pixel at sub-bin offsets.

  Args:
    theta: (V,) view angles, radians.

  Returns:
    (V, 2 * _KERNEL_HALF_WIDTH + 1) float64: entry (v, j) is the mean over a
    bin (unit width) of the projection of a unit square pixel whose centre
    lies (j - _KERNEL_HALF_WIDTH) / _SUB_BINS bins from the bin centre. The
    projection of the pixel is a trapezoid, the convolution of boxes of
    widths |cos| and |sin| (unit area), so its integral over the bin is a
    difference of its cumulative, a sum of four max(u, 0)^2 / 2 terms.
  """
  # Box widths, kept away from 0 so the closed form stays finite (a 1e-6
  # pixel box changes nothing visible).
  width_a = np.maximum(np.abs(np.cos(theta)), 1e-6)[:, None]
  width_b = np.maximum(np.abs(np.sin(theta)), 1e-6)[:, None]
  half_sum, half_diff = (width_a + width_b) / 2.0, (width_a - width_b) / 2.0

  def cumulative(u):  # Integral of box_a * box_b (area a * b) up to u.
    return (_ramp_integral2(u + half_sum) - _ramp_integral2(u + half_diff) -
            _ramp_integral2(u - half_diff) + _ramp_integral2(u - half_sum))

  offsets = (np.arange(2 * _KERNEL_HALF_WIDTH + 1) -
             _KERNEL_HALF_WIDTH)[None] / _SUB_BINS
  return (cumulative(offsets + 0.5) - cumulative(offsets - 0.5)) / (
      width_a * width_b)


def _detector_positions(geometry: Geometry, views: np.ndarray) -> np.ndarray:
  """(len(views), N * N) detector position of each pixel centre, in bins
  (0 = centre of the first bin)."""
  x, y = _pixel_centres(geometry.image_size)
  theta = np.pi * views / geometry.num_views
  return (x[None] * np.cos(theta)[:, None] + y[None] * np.sin(theta)[:, None]
          + (geometry.num_detectors - 1) / 2.0)


def _view_chunks(geometry: Geometry, num_views: int) -> list[np.ndarray]:
  """The (sparse) scan's views (indices into the full scan) in chunks that
  keep temporaries to about _CHUNK_ELEMENTS pixel-views."""
  views = view_indices(geometry.num_views, num_views)
  per_chunk = max(1, _CHUNK_ELEMENTS // geometry.image_size**2)
  return [views[i:i + per_chunk] for i in range(0, len(views), per_chunk)]


def _histogram_entries(geometry: Geometry,
                       views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Where pixels land on the projector's sub-bin grid.

  Returns:
    index: (len(views), N * N) int64, index of the sub-bin sample at or left
      of each pixel centre in the flattened (len(views), _fine_length) grid.
    fraction: (len(views), N * N) float64 in [0, 1): weight of sample
      index + 1 (index gets 1 - fraction).
  """
  fine = (_detector_positions(geometry, views) * _SUB_BINS +
          _KERNEL_HALF_WIDTH + 1)
  lower = np.floor(fine)
  offsets = np.arange(len(views))[:, None] * _fine_length(geometry)
  return lower.astype(np.int64) + offsets, fine - lower


def _fine_length(geometry: Geometry) -> int:
  """Sub-bin samples per view: the bins plus the kernel's reach each side."""
  return geometry.num_detectors * _SUB_BINS + 2 * (_KERNEL_HALF_WIDTH + 1)


def _tap_start(j: int) -> int:
  """Sub-bin sample that kernel column j multiplies for bin 0 (bin k: plus
  k * _SUB_BINS): the pixels centred (j - _KERNEL_HALF_WIDTH) / _SUB_BINS
  bins from the bin centre, on the grid padded by _KERNEL_HALF_WIDTH + 1."""
  return j + 1


def _backprojection_entries(geometry: Geometry,
                            views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation of each view at each pixel centre.

  Returns:
    index: (len(views), N * N) int64, index of the bin at or left of each
      pixel centre's detector position in the flattened (len(views), B)
      sinogram.
    fraction: (len(views), N * N) float64 in [0, 1): weight of bin
      index + 1 (index gets 1 - fraction).
  """
  position = _detector_positions(geometry, views)
  lower = np.floor(position)
  offsets = np.arange(len(views))[:, None] * geometry.num_detectors
  return lower.astype(np.int64) + offsets, position - lower


def _is_cached(geometry: Geometry, num_views: int) -> bool:
  return 3 * geometry.image_size**2 * num_views <= _MAX_CACHED_NONZEROS


@functools.lru_cache(maxsize=16)
def _cached_matrices(
    geometry: Geometry,
    num_views: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
  """The whole projector (V * B, N * N), mm, and back-projector
  (N * N, V * B) of a (sparse) scan as float32 sparse matrices; only for
  small operators (`_is_cached`)."""
  views = view_indices(geometry.num_views, num_views)
  num_pixels, num_bins = geometry.image_size**2, geometry.num_detectors
  pixels = np.broadcast_to(np.arange(num_pixels), (num_views, num_pixels))
  pixels = np.concatenate([pixels.ravel()] * 2)

  index, fraction = _histogram_entries(geometry, views)
  histogram = sparse.csr_matrix(
      (np.concatenate([(1.0 - fraction).ravel(), fraction.ravel()]),
       (np.concatenate([index.ravel(), index.ravel() + 1]), pixels)),
      shape=(num_views * _fine_length(geometry), num_pixels))
  kernel = _footprint_kernel(np.pi * views / geometry.num_views)
  view, bin_ = np.meshgrid(np.arange(num_views), np.arange(num_bins),
                           indexing='ij')
  rows, cols, values = [], [], []
  for j in range(kernel.shape[1]):
    rows.append((view * num_bins + bin_).ravel())
    cols.append((view * _fine_length(geometry) + _tap_start(j) +
                 bin_ * _SUB_BINS).ravel())
    values.append(np.repeat(kernel[:, j], num_bins))
  convolve = sparse.csr_matrix(
      (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
      shape=(num_views * num_bins, histogram.shape[0]))
  projector = (convolve @ histogram) * geometry.pixel_size_mm

  index, fraction = _backprojection_entries(geometry, views)
  backprojector = sparse.csr_matrix(
      (np.concatenate([(1.0 - fraction).ravel(), fraction.ravel()]),
       (pixels, np.concatenate([index.ravel(), index.ravel() + 1]))),
      shape=(num_pixels, num_views * num_bins))
  return projector.astype(np.float32), backprojector.astype(np.float32)


def forward_project(mu: np.ndarray, geometry: Geometry,
                    num_views: int | None = None) -> np.ndarray:
  """Line integrals of an attenuation image (separable-footprint projector).

  Each pixel's value is deposited on a grid of _SUB_BINS samples per bin with
  linear weights at its centre's detector position; convolving that
  histogram with the view's footprint kernel (`_footprint_kernel`) and
  keeping every _SUB_BINS-th sample gives the bin-averaged projection of the
  pixel squares (exact up to the 1 / _SUB_BINS bin quantisation of pixel
  positions).

  Args:
    mu: (N, N) linear attenuation, 1/mm (N = geometry.image_size).
    geometry: the scan.
    num_views: views of a sparse scan (default: the full scan).

  Returns:
    (num_views, num_detectors) float32 sinogram of dimensionless line
    integrals (each averaged over its bin).
  """
  num_views = geometry.num_views if num_views is None else num_views
  size, num_bins = geometry.image_size, geometry.num_detectors
  if mu.shape != (size, size):
    raise ValueError(f'forward_project expected a ({size}, {size}) image, '
                     f'got {mu.shape}.')
  if _is_cached(geometry, num_views):
    projector, _ = _cached_matrices(geometry, num_views)
    image = np.asarray(mu, dtype=np.float32).ravel()
    return (projector @ image).reshape(num_views, num_bins)
  # Unit pixel area over unit bin width is 1 pixel = pixel_size mm.
  image = np.asarray(mu, dtype=np.float64).ravel() * geometry.pixel_size_mm
  fine_length = _fine_length(geometry)
  sinogram = []
  for views in _view_chunks(geometry, num_views):
    index, fraction = _histogram_entries(geometry, views)
    size = len(views) * fine_length
    histogram = (
        np.bincount(index.ravel(), ((1.0 - fraction) * image).ravel(),
                    minlength=size) +
        np.bincount(index.ravel() + 1, (fraction * image).ravel(),
                    minlength=size))[:size].reshape(len(views), fine_length)
    kernel = _footprint_kernel(np.pi * views / geometry.num_views)
    chunk = np.zeros((len(views), num_bins))
    for j in range(kernel.shape[1]):
      start = _tap_start(j)
      chunk += kernel[:, j:j + 1] * histogram[
          :, start:start + num_bins * _SUB_BINS:_SUB_BINS]
    sinogram.append(chunk)
  return np.concatenate(sinogram).astype(np.float32)


def _backproject(filtered: np.ndarray, geometry: Geometry) -> np.ndarray:
  """Pixel-driven back-projection with linear interpolation.

  Args:
    filtered: (K, V, B) filtered sinograms of a (sparse) scan.
    geometry: the scan.

  Returns:
    (K, N * N) float32: per pixel, the sum over views of each sinogram
    interpolated at the pixel centre's detector position (not yet scaled by
    pi / V).
  """
  num_stack, num_views, num_bins = filtered.shape
  filtered = filtered.astype(np.float32)
  if _is_cached(geometry, num_views):
    _, backprojector = _cached_matrices(geometry, num_views)
    return (backprojector @ filtered.reshape(num_stack, -1).T).T
  image = np.zeros((num_stack, geometry.image_size**2), np.float32)
  start = 0
  for views in _view_chunks(geometry, num_views):
    index, fraction = _backprojection_entries(geometry, views)
    fraction = fraction.astype(np.float32)
    for stack, sinogram in enumerate(filtered[:, start:start + len(views)]):
      values = sinogram.ravel()
      image[stack] += (np.take(values, index) * (1.0 - fraction) +
                       np.take(values, index + 1) * fraction).sum(axis=0)
    start += len(views)
  return image


def noisy_line_integrals(line_integrals: np.ndarray, *, photons_per_bin: float,
                         dose_fraction: float, electronic_noise: float,
                         rng: np.random.Generator,
                         min_counts: float = 1.0) -> np.ndarray:
  """Simulates a (reduced-dose) measurement of noise-free line integrals.

  Args:
    line_integrals: (V, B) noise-free line integrals (dimensionless).
    photons_per_bin: I0, mean unattenuated photons per bin and view at full
      dose.
    dose_fraction: in (0, 1]; scales I0 (tube current x time).
    electronic_noise: std of the additive Gaussian detector noise, photons.
    rng: the only source of randomness.
    min_counts: counts are clamped to at least this before the log.

  Returns:
    (V, B) float32 noisy line integrals -log(counts / (I0 * dose_fraction)).
  """
  if not 0.0 < dose_fraction <= 1.0:
    raise ValueError(f'dose_fraction must be in (0, 1], got {dose_fraction}.')
  if not photons_per_bin > 0:
    raise ValueError(f'photons_per_bin must be > 0, got {photons_per_bin}.')
  blank = photons_per_bin * dose_fraction
  expected = blank * np.exp(-np.asarray(line_integrals, dtype=np.float64))
  counts = rng.poisson(expected) + rng.normal(0.0, electronic_noise,
                                              expected.shape)
  counts = np.maximum(counts, min_counts)
  return (-np.log(counts / blank)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _filter_response(num_detectors: int, filter_name: str) -> np.ndarray:
  """Frequency response of the band-limited ramp filter (rfft layout).

  The ramp is built in the spatial domain (Kak & Slaney eq. 61: 1/4 at 0,
  -1/(pi n)^2 at odd n, 0 at even n) and zero-padded to >= 2 * bins, which
  avoids the DC offset and wrap-around of a sampled |f| response.
  """
  padded = max(64, 2**math.ceil(math.log2(2 * num_detectors)))
  n = np.arange(padded)
  n = np.minimum(n, padded - n)  # Circular distance, for a symmetric kernel.
  kernel = np.where(n % 2 == 1, -1.0 / np.square(np.pi * np.maximum(n, 1)), 0.0)
  kernel[0] = 0.25
  response = np.fft.rfft(kernel).real
  frequency = np.fft.rfftfreq(padded)  # Cycles per bin, 0 .. 0.5.
  if filter_name == 'hann':
    response = response * 0.5 * (1.0 + np.cos(2.0 * np.pi * frequency))
  elif filter_name != 'ramp':
    raise ValueError(f"filter_name must be 'ramp' or 'hann', got {filter_name!r}.")
  return response


def filtered_backprojection(sinograms: np.ndarray, geometry: Geometry, *,
                            filter_name: str = 'hann') -> np.ndarray:
  """Reconstructs attenuation images from (sparse-view) sinograms.

  Args:
    sinograms: (V, B) or (K, V, B) line integrals; V is the full scan's
      num_views or a sparse count dividing it (the evenly strided subset of
      `view_indices`), B = geometry.num_detectors. Several sinograms of the
      same views are back-projected together (cheaper than one by one).
    geometry: the scan.
    filter_name: 'ramp' or 'hann' (ramp apodised by a Hann window).

  Returns:
    (N, N) or (K, N, N) float32 linear attenuation, 1/mm.
  """
  sinograms = np.asarray(sinograms, dtype=np.float32)
  single = sinograms.ndim == 2
  if single:
    sinograms = sinograms[None]
  num_stack, num_views, num_bins = sinograms.shape
  if num_bins != geometry.num_detectors:
    raise ValueError(f'sinograms have {num_bins} bins, the geometry has '
                     f'{geometry.num_detectors}.')
  response = _filter_response(num_bins, filter_name)
  padded = 2 * (len(response) - 1)
  filtered = np.fft.irfft(np.fft.rfft(sinograms, padded, axis=-1) * response,
                          padded, axis=-1)[..., :num_bins]
  filtered /= geometry.pixel_size_mm  # Kernel scale 1 / bin_width^2, times bin_width.
  image = _backproject(filtered, geometry)
  image *= np.pi / num_views
  image = image.reshape(num_stack, geometry.image_size,
                        geometry.image_size).astype(np.float32)
  return image[0] if single else image
