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
view angle theta and detector position t is {x cos(theta) + y sin(theta) = t};
bin k is centred at t_k = (k - (B - 1) / 2) * pixel.

Both operators work in the Fourier domain, through non-uniform FFTs (finufft,
Barnett, Magland & af Klinteberg 2019) at the polar frequencies
u (cos(theta), sin(theta)), u in cycles per bin:

Projector (Fourier-slice theorem). The image is taken as piecewise constant
on its square pixels (the phantom rasteriser area-averages each pixel), so
its 2-D spectrum is the type-2 NUFFT of the pixel values times the pixel
box's transfer sinc(u cos) sinc(u sin); the 1-D spectrum of a view is that
spectrum on the view's line, and averaging over a bin multiplies it by
sinc(u). Sampling the bin averages at the bin centres folds the spectrum
into the detector band: the DFT of the samples at u_n = n / L is the sum of
the spectrum at u_n + m over all integers m (Poisson summation), so the
frequencies above the detector Nyquist are folded in, not dropped
(|m| <= `_ALIASES`; the sinc^3 envelope makes the rest negligible). An
inverse real FFT of length L > B (odd, so no Nyquist term) gives the bins,
without wrap-around as the projection is shorter than L bins.

Reconstruction: filtered back-projection, the textbook filter (Kak & Slaney
ch. 3: band-limited ramp built in the spatial domain, zero-padded FFT) times
a window (`FILTERS`: ramp, Shepp-Logan, cosine, Hann, from sharpest to
smoothest, like a scanner's reconstruction kernels); then back-projection
with ideal (trigonometric, period L) interpolation between bins, which is a
type-1 NUFFT of the filtered projections' spectra onto the pixel grid, times
pi / num_views. Several sinograms of the same views share one NUFFT (finufft
`n_trans`).

Real images have Hermitian spectra, so both operators use the frequencies
u >= 0 only; a view costs (L + 1) / 2 non-uniform points per alias.

Noise: each bin of each view receives Poisson photon counts with mean
I0 * dose_fraction * exp(-line_integral), plus zero-mean Gaussian electronic
noise; counts below `min_counts` are clamped before the log (what a
scanner's pre-processing does against log(0) in photon-starved rays).
Sparse views keep the per-view dose, so a sparse scan also delivers fewer
photons in total.
"""
import dataclasses
import functools
import math
from typing import Sequence

import finufft
import numpy as np
from scipy import fft

# Reconstruction kernels: name -> window of the band-limited ramp, a function
# of the frequency in cycles per bin (0 .. 0.5), sharpest first.
FILTERS = {
    'ramp': lambda u: np.ones_like(u),
    'shepp_logan': np.sinc,                       # sin(pi u) / (pi u).
    'cosine': lambda u: np.cos(np.pi * u),
    'hann': lambda u: 0.5 * (1.0 + np.cos(2.0 * np.pi * u)),
}
# Aliases folded into the detector band on each side: the projector's
# spectrum is evaluated for |u| < _ALIASES + 1/2 cycles per bin. Beyond 1.5
# the pixel box and bin transfers are below 5 % (sinc^2 along the axes,
# sinc^3 elsewhere); folding more changes a phantom's reconstruction by
# 0.6 HU RMS with the ramp kernel, and by 5 HU without folding.
_ALIASES = 1
# finufft: single precision reaches ~1e-4 relative error on 1e6 points at
# |u| <= 1.5 (bin-width phase errors of float32 points), so ask no more;
# the small upsampling factor is the fast choice for that tolerance; one
# thread, as the dataset builders run one process per core.
_NUFFT_OPTIONS = {'eps': 1e-4, 'upsampfac': 1.25, 'nthreads': 1}
_NUFFT_DTYPE = np.complex64


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
    return _num_detectors(self.image_size)


def _num_detectors(image_size: int) -> int:
  """Bins: the even count just above the image diagonal, plus a margin."""
  return 2 * math.ceil(image_size * math.sqrt(2.0) / 2.0) + 2


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


def _fft_length(num_detectors: int) -> int:
  """L: the smallest odd length >= B + 3 (729 for 512-px images).

  B + 3 bins hold a projection (the image diagonal plus a pixel footprint
  and a bin, < B + 1 bins) with its periodic copies off the B kept bins; odd,
  so the spectrum has no Nyquist term whose phase would be ambiguous.
  """
  return num_detectors + 3 + num_detectors % 2


@functools.lru_cache(maxsize=8)
def _polar_grid(image_size: int, num_views_full: int, num_views: int,
                aliases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Where the operators meet the image spectrum, and the phases there.

  Returns (read-only, shared by all callers):
    frequency_y, frequency_x: (M,) float32, M = V * A * (L + 1) / 2 for the
      V views of the (sparse) scan and A = 2 * aliases + 1: 2 pi u sin(theta)
      and 2 pi u cos(theta), finufft's points for the image axes (rows with
      y up, columns), at u = n / L + m, n = 0 .. (L - 1) / 2, m = -aliases ..
      aliases, ordered (view, m, n).
    shift: (M,) complex64, exp(-i pi u (cos + sin + B - 1)): the phase that
      moves finufft's integer mode positions to the pixel centres (half a
      pixel) and the first bin's centre to t_0 = -(B - 1) / 2 bins.
  """
  num_bins = _num_detectors(image_size)
  half = (_fft_length(num_bins) + 1) // 2
  theta = np.pi * view_indices(num_views_full, num_views) / num_views_full
  offsets = np.arange(-aliases, aliases + 1)
  u = (np.arange(half)[None, None] / _fft_length(num_bins) +
       offsets[None, :, None]) * np.ones((len(theta), 1, 1))
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  shift = np.exp(-1j * np.pi * u * (cos + sin + num_bins - 1))
  grid = (2.0 * np.pi * u * sin, 2.0 * np.pi * u * cos)
  arrays = tuple(a.ravel().astype(np.float32) for a in grid) + (
      shift.ravel().astype(_NUFFT_DTYPE),)
  for array in arrays:
    array.flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=8)
def _projection_transfer(image_size: int, num_views_full: int, num_views: int,
                         aliases: int) -> np.ndarray:
  """(V, A, (L + 1) / 2) complex64: pixel box x bin average transfer
  sinc(u cos) sinc(u sin) sinc(u) times the phase `shift`, per point of
  `_polar_grid` (read-only)."""
  frequency_y, frequency_x, shift = _polar_grid(image_size, num_views_full,
                                                num_views, aliases)
  u_sin, u_cos = frequency_y / (2.0 * np.pi), frequency_x / (2.0 * np.pi)
  transfer = np.sinc(u_cos) * np.sinc(u_sin) * np.sinc(np.hypot(u_cos, u_sin))
  transfer = (transfer * shift).astype(_NUFFT_DTYPE).reshape(
      num_views, 2 * aliases + 1, -1)
  transfer.flags.writeable = False
  return transfer


def forward_project(mu: np.ndarray, geometry: Geometry,
                    num_views: int | None = None) -> np.ndarray:
  """Bin-averaged line integrals of a pixelated attenuation image.

  Fourier-slice projector (module docstring): exact for an image that is
  constant on each square pixel, up to the NUFFT tolerance (~1e-4) and the
  spectrum beyond `_ALIASES` folds.

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
  frequency_y, frequency_x, _ = _polar_grid(size, geometry.num_views,
                                            num_views, _ALIASES)
  # Rows flipped: finufft's first mode index must grow with y.
  spectrum = finufft.nufft2d2(
      frequency_y, frequency_x,
      np.ascontiguousarray(mu[::-1], dtype=_NUFFT_DTYPE), isign=-1,
      **_NUFFT_OPTIONS)
  transfer = _projection_transfer(size, geometry.num_views, num_views,
                                  _ALIASES)
  folded = (transfer * spectrum.reshape(transfer.shape)).sum(axis=1)
  length = _fft_length(num_bins)
  # Area of a pixel over the bin width: pixel_size mm.
  return (fft.irfft(folded, length, axis=-1)[:, :num_bins] *
          geometry.pixel_size_mm).astype(np.float32)


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


def _padded_length(num_detectors: int) -> int:
  """FFT length of the ramp filtering: a fast length >= 2 B (no wrap)."""
  return fft.next_fast_len(2 * num_detectors, real=True)


@functools.lru_cache(maxsize=32)
def _filter_response(num_detectors: int, filter_name: str) -> np.ndarray:
  """Frequency response of a reconstruction kernel (rfft layout), per bin^2.

  The ramp is built in the spatial domain (Kak & Slaney eq. 61: 1/4 at 0,
  -1/(pi n)^2 at odd n, 0 at even n) and zero-padded to >= 2 * bins, which
  avoids the DC offset and wrap-around of a sampled |f| response; the
  window (`FILTERS`) multiplies its spectrum.
  """
  if filter_name not in FILTERS:
    raise ValueError(f'filter_name must be one of {sorted(FILTERS)}, got '
                     f'{filter_name!r}.')
  padded = _padded_length(num_detectors)
  n = np.arange(padded)
  n = np.minimum(n, padded - n)  # Circular distance, for a symmetric kernel.
  kernel = np.where(n % 2 == 1, -1.0 / np.square(np.pi * np.maximum(n, 1)), 0.0)
  kernel[0] = 0.25
  response = np.fft.rfft(kernel).real * FILTERS[filter_name](
      np.fft.rfftfreq(padded))
  response = response.astype(np.float32)
  response.flags.writeable = False
  return response


def filtered_backprojection(sinograms: np.ndarray, geometry: Geometry, *,
                            filter_name: str | Sequence[str] = 'hann'
                            ) -> np.ndarray:
  """Reconstructs attenuation images from (sparse-view) sinograms.

  Args:
    sinograms: (V, B) or (K, V, B) line integrals; V is the full scan's
      num_views or a sparse count dividing it (the evenly strided subset of
      `view_indices`), B = geometry.num_detectors. Several sinograms of the
      same views are back-projected together (cheaper than one by one).
    geometry: the scan.
    filter_name: a key of `FILTERS`, or K of them (one per sinogram).

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
  names = [filter_name] * num_stack if isinstance(filter_name, str) else list(
      filter_name)
  if len(names) != num_stack:
    raise ValueError(f'filter_name: expected 1 or {num_stack} names, got '
                     f'{len(names)}.')
  response = np.stack([_filter_response(num_bins, name) for name in names])
  padded = _padded_length(num_bins)
  filtered = fft.irfft(
      fft.rfft(sinograms, padded, axis=-1) * response[:, None], padded,
      axis=-1)[..., :num_bins]
  length = _fft_length(num_bins)
  spectra = fft.rfft(filtered, length, axis=-1)
  spectra[..., 1:] *= 2.0  # Each u > 0 stands for itself and -u.
  frequency_y, frequency_x, shift = _polar_grid(
      geometry.image_size, geometry.num_views, num_views, 0)
  coefficients = (spectra.reshape(num_stack, -1) * np.conj(shift)).astype(
      _NUFFT_DTYPE)
  size = geometry.image_size
  image = finufft.nufft2d1(frequency_y, frequency_x, coefficients, (size, size),
                           isign=1, **_NUFFT_OPTIONS).real
  # Kernel scale 1 / bin_width^2 times bin_width; pi / V for the angle
  # integral; 1 / L of the inverse DFT of the interpolation.
  image *= np.pi / (num_views * length * geometry.pixel_size_mm)
  image = np.ascontiguousarray(image[:, ::-1], dtype=np.float32)
  return image[0] if single else image
