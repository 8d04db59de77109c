"""Physics checks of the CT acquisition simulator (acquisition.py, intensity.py)."""
import numpy as np
import pytest
from scipy import ndimage

from mdiqa_jax.data import acquisition
from mdiqa_jax.data import intensity
from mdiqa_jax.data import phantoms
from mdiqa_jax.data import synthetic

# A quick geometry (128 px of 3 mm, 256 views) for the operator checks; the
# dataset-level checks use the clinical one (512 px, 1024 views).
GEOMETRY = acquisition.Geometry(image_size=128, pixel_size_mm=3.0, num_views=256)
CLINICAL = synthetic.CLINICAL_SPEC
MU_WATER = intensity.MU_WATER_PER_MM
# Photons per bin of the water-cylinder checks: ~12 HU of Hann noise at 3 mm.
PHOTONS_PER_BIN = 1e5


def _disk(size, radius_pixels, supersample=8):
  """(size, size) area fraction of each pixel inside a centred disk."""
  offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
  rows, cols = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
  fraction = np.zeros((size, size))
  for dy in offsets:
    for dx in offsets:
      fraction += (rows + dy)**2 + (cols + dx)**2 <= radius_pixels**2
  return fraction / supersample**2


def _bin_averaged_chords(geometry, radius_pixels, samples=256):
  """Chord length (mm) of a centred disk averaged over each detector bin,
  by numerical integration of 2 sqrt(r^2 - t^2) (independent of the code)."""
  bins = np.arange(geometry.num_detectors) - (geometry.num_detectors - 1) / 2.0
  t = bins[:, None] + (np.arange(samples) + 0.5) / samples - 0.5
  chord = 2.0 * np.sqrt(np.maximum(radius_pixels**2 - t**2, 0.0))
  return chord.mean(axis=1) * geometry.pixel_size_mm


def test_window_to_unit_maps_window_edges_and_clips():
  hu = np.array([-1000.0, -135.0, 40.0, 215.0, 3000.0])
  np.testing.assert_allclose(intensity.window_to_unit(hu), [0, 0, 0.5, 1, 1],
                             atol=1e-6)
  np.testing.assert_allclose(
      intensity.window_to_unit(np.array([-150.0, 50.0, 250.0]), 400.0, 50.0),
      [0.0, 0.5, 1.0], atol=1e-6)
  with pytest.raises(ValueError, match='width'):
    intensity.window_to_unit(hu, width=0.0)


def test_hu_attenuation_round_trip_and_anchors():
  assert intensity.hu_to_attenuation(-1000.0) == 0.0
  assert intensity.hu_to_attenuation(0.0) == pytest.approx(MU_WATER)
  hu = np.linspace(-1000, 2000, 7)
  np.testing.assert_allclose(
      intensity.attenuation_to_hu(intensity.hu_to_attenuation(hu)), hu,
      atol=1e-9)


def test_projection_of_one_pixel_conserves_its_area_in_every_view():
  image = np.zeros((GEOMETRY.image_size,) * 2)
  image[40, 77] = 1.0
  sinogram = acquisition.forward_project(image, GEOMETRY)
  # Sum over bins of bin-averaged line integrals x bin width = pixel area
  # (the DFT at 0, where every fold is a zero of the bin's sinc), to the
  # NUFFT's 1e-4 tolerance.
  np.testing.assert_allclose(sinogram.sum(axis=1) * GEOMETRY.pixel_size_mm,
                             GEOMETRY.pixel_size_mm**2, rtol=5e-4)


def test_projection_of_disk_matches_analytic_chord_lengths():
  radius = 40.3
  mu = MU_WATER * _disk(GEOMETRY.image_size, radius)
  sinogram = acquisition.forward_project(mu, GEOMETRY)
  expected = MU_WATER * _bin_averaged_chords(GEOMETRY, radius)
  error = sinogram - expected[None]
  # The residual (~0.2 % RMS) is the staircase edge of the pixelated disk,
  # largest at 45 degrees (view 64); a pixel-driven projector's moire would
  # put ~4 % RMS there.
  assert np.sqrt(np.mean(error**2)) < 0.003 * expected.max()
  assert np.sqrt(np.mean(error[64]**2)) < 0.004 * expected.max()
  assert np.abs(error).max() < 0.03 * expected.max()


def _pixel_footprint(geometry, row, col, samples=400):
  """(V, B) bin-averaged line integrals of a unit pixel, by the midpoint rule:
  the pixel's area falling in each bin's strip over the bin width."""
  offsets = (np.arange(samples) + 0.5) / samples - 0.5
  dy, dx = np.meshgrid(offsets, offsets, indexing='ij')
  centre = (geometry.image_size - 1) / 2.0
  x, y = col - centre + dx, centre - row + dy
  num_bins = geometry.num_detectors
  footprint = np.zeros((geometry.num_views, num_bins))
  for view in range(geometry.num_views):
    theta = np.pi * view / geometry.num_views
    position = x * np.cos(theta) + y * np.sin(theta) + (num_bins - 1) / 2.0
    footprint[view] = np.bincount(np.floor(position + 0.5).astype(int).ravel(),
                                  minlength=num_bins)[:num_bins] / samples**2
  return footprint * geometry.pixel_size_mm


def test_projection_of_one_pixel_converges_to_its_footprint(monkeypatch):
  """The spectrum beyond the detector band is folded in (not dropped): the
  error against the exact footprint halves each time the folds double, and
  is 0.3 % of the peak (RMS) at the default."""
  geometry = acquisition.Geometry(32, 1.5, 64)
  image = np.zeros((32, 32))
  image[9, 20] = 1.0
  footprint = _pixel_footprint(geometry, 9, 20)

  def rms_error(aliases):
    monkeypatch.setattr(acquisition, '_ALIASES', aliases)
    error = acquisition.forward_project(image, geometry) - footprint
    return np.sqrt(np.mean(error**2)) / footprint.max()

  default = rms_error(acquisition._ALIASES)
  assert default < 0.004
  errors = [rms_error(aliases) for aliases in (0, 2, 4, 8)]
  assert errors[0] > 2.0 * default
  for coarse, fine in zip(errors[1:], errors[2:]):
    assert fine < 0.6 * coarse


def _direct_fbp(sinogram, geometry, filter_name):
  """FBP by its definition, one pixel at a time: the textbook filter by
  linear convolution, then per view the filtered bins interpolated at the
  pixel's detector position with the periodic sinc (Dirichlet kernel) of
  the operator's length L."""
  num_views, num_bins = sinogram.shape
  n = np.arange(-(num_bins - 1), num_bins)
  ramp = np.where(n % 2 == 1, -1.0 / np.square(np.pi * np.maximum(np.abs(n), 1)),
                  0.0)
  ramp[num_bins - 1] = 0.25
  padded = acquisition._padded_length(num_bins)
  window = acquisition.FILTERS[filter_name](np.fft.rfftfreq(padded))
  kernel = np.fft.irfft(np.fft.rfft(np.roll(np.pad(ramp, (0, padded - len(ramp))),
                                            -(num_bins - 1))) * window, padded)
  kernel = np.concatenate([kernel[-(num_bins - 1):], kernel[:num_bins]])
  filtered = np.stack([np.convolve(view, kernel)[num_bins - 1:2 * num_bins - 1]
                       for view in sinogram]) / geometry.pixel_size_mm
  length = acquisition._fft_length(num_bins)
  size = geometry.image_size
  centre = (size - 1) / 2.0
  rows, cols = np.mgrid[0:size, 0:size]
  x, y = cols - centre, centre - rows
  image = np.zeros((size, size))
  for view in range(num_views):
    theta = np.pi * view / num_views
    position = x * np.cos(theta) + y * np.sin(theta) + (num_bins - 1) / 2.0
    offset = position[..., None] - np.arange(num_bins)
    dirichlet = np.where(np.abs(np.sin(np.pi * offset / length)) < 1e-12, 1.0,
                         np.sin(np.pi * offset) / (
                             length * np.sin(np.pi * offset / length) + 1e-300))
    image += dirichlet @ filtered[view]
  return image * np.pi / num_views


@pytest.mark.parametrize('filter_name', sorted(acquisition.FILTERS))
def test_nufft_fbp_equals_direct_backprojection(filter_name):
  geometry = acquisition.Geometry(16, 2.0, 12)
  rng = np.random.default_rng(0)
  sinogram = rng.uniform(0.0, 1.0, (12, geometry.num_detectors))
  expected = _direct_fbp(sinogram, geometry, filter_name)
  image = acquisition.filtered_backprojection(sinogram, geometry,
                                              filter_name=filter_name)
  np.testing.assert_allclose(image, expected, atol=2e-3 * np.abs(expected).max())


def test_fbp_of_a_stack_equals_one_by_one_with_per_sinogram_filters():
  rng = np.random.default_rng(1)
  sinograms = rng.uniform(0.0, 1.0, (3, 64, GEOMETRY.num_detectors))
  names = ['ramp', 'hann', 'cosine']
  stacked = acquisition.filtered_backprojection(sinograms, GEOMETRY,
                                                filter_name=names)
  for sinogram, name, image in zip(sinograms, names, stacked):
    np.testing.assert_allclose(
        acquisition.filtered_backprojection(sinogram, GEOMETRY,
                                            filter_name=name), image,
        atol=1e-4 * np.abs(image).max())
  with pytest.raises(ValueError, match='filter_name'):
    acquisition.filtered_backprojection(sinograms, GEOMETRY,
                                        filter_name=['ramp'])
  with pytest.raises(ValueError, match='filter_name'):
    acquisition.filtered_backprojection(sinograms[0], GEOMETRY,
                                        filter_name='sharp')


# Interior std bound per kernel, HU: the windowed kernels are flat (measured
# 0.06 / 0.22 HU); the unwindowed ones keep the Gibbs ringing of the disk's
# edge, which a centred disk focuses at its centre (measured 2.2 / 3.5 HU).
_DISK_INTERIOR_STD_HU = {'hann': 0.5, 'cosine': 1.0, 'shepp_logan': 3.0,
                         'ramp': 4.5}


@pytest.mark.parametrize('filter_name', sorted(acquisition.FILTERS))
def test_fbp_of_uniform_disk_recovers_its_attenuation(filter_name):
  radius = 45.0
  mu = MU_WATER * _disk(GEOMETRY.image_size, radius)
  sinogram = acquisition.forward_project(mu, GEOMETRY)
  image = acquisition.filtered_backprojection(sinogram, GEOMETRY,
                                              filter_name=filter_name)
  inner = _disk(GEOMETRY.image_size, radius - 4.0) == 1.0
  outer = _disk(GEOMETRY.image_size, radius + 4.0) == 0.0
  hu = intensity.attenuation_to_hu(image)
  assert abs(hu[inner].mean()) < 1.0
  assert hu[inner].std() < _DISK_INTERIOR_STD_HU[filter_name]
  assert abs(image[outer].mean()) < 0.002 * MU_WATER


def test_noisy_line_integrals_have_poisson_mean_and_variance():
  rng = np.random.default_rng(1)
  line_integrals = np.full((400, 500), 3.0)
  noisy = acquisition.noisy_line_integrals(
      line_integrals, photons_per_bin=1e5, dose_fraction=0.5,
      electronic_noise=0.0, rng=rng)
  counts = 0.5e5 * np.exp(-3.0)
  # Delta method: var(-log(N / I)) = 1 / E[N] for Poisson N.
  assert noisy.mean() == pytest.approx(3.0, abs=1e-3)
  assert noisy.var() == pytest.approx(1.0 / counts, rel=0.02)
  with pytest.raises(ValueError, match='dose_fraction'):
    acquisition.noisy_line_integrals(line_integrals, photons_per_bin=1e5,
                                     dose_fraction=0.0, electronic_noise=0.0,
                                     rng=rng)


def _water_cylinder_noise(geometry, photons_per_bin, dose_fractions, kernels,
                          seed):
  """Noise std (HU) in a water cylinder of 32 cm (the CTDI body phantom) or
  90 % of the field of view: {(dose, kernel): std} over its interior, from
  one noisy scan per dose."""
  radius = min(160.0 / geometry.pixel_size_mm, 0.45 * geometry.image_size)
  mu = MU_WATER * _disk(geometry.image_size, radius, supersample=2)
  clean = acquisition.forward_project(mu, geometry)
  roi = _disk(geometry.image_size, radius - 8.0, supersample=2) == 1.0
  rng = np.random.default_rng(seed)
  noise = {}
  for dose_fraction in dose_fractions:
    noisy = acquisition.noisy_line_integrals(
        clean, photons_per_bin=photons_per_bin, dose_fraction=dose_fraction,
        electronic_noise=CLINICAL.electronic_noise, rng=rng)
    images = intensity.attenuation_to_hu(acquisition.filtered_backprojection(
        np.stack([noisy] * len(kernels) + [clean] * len(kernels)), geometry,
        filter_name=list(kernels) * 2))
    for kernel, image, noise_free in zip(kernels, images[:len(kernels)],
                                         images[len(kernels):]):
      noise[dose_fraction, kernel] = float(np.std((image - noise_free)[roi]))
  return noise


def test_noise_std_scales_as_inverse_sqrt_dose_in_water_cylinder():
  """std(dose d) / std(full dose) = 1 / sqrt(d) within 10 %, d = 0.5, 0.25,
  at the clinical geometry and photon budget (0.75 mm, 3 mm slices), for
  every kernel."""
  geometry = CLINICAL.geometry(0.75)
  noise = _water_cylinder_noise(
      geometry, CLINICAL.photons_per_mm2 * 0.75 * 3.0, (1.0, 0.5, 0.25),
      tuple(acquisition.FILTERS), seed=2)
  assert 5.0 < noise[1.0, 'hann'] < 20.0  # A clinical soft-tissue noise, HU.
  for kernel in acquisition.FILTERS:
    for dose_fraction in (0.5, 0.25):
      ratio = noise[dose_fraction, kernel] / noise[1.0, kernel]
      assert ratio == pytest.approx(1.0 / np.sqrt(dose_fraction), rel=0.1), (
          kernel, dose_fraction)


def test_sharper_kernels_are_noisier():
  """The same scan reconstructed with each kernel: noise std ramp >
  Shepp-Logan > cosine > Hann (the windows' noise power), each step > 20 %."""
  noise = _water_cylinder_noise(GEOMETRY, PHOTONS_PER_BIN, (1.0,),
                                ('ramp', 'shepp_logan', 'cosine', 'hann'),
                                seed=4)
  stds = [noise[1.0, kernel] for kernel in ('ramp', 'shepp_logan', 'cosine',
                                            'hann')]
  assert all(sharper > 1.2 * smoother
             for sharper, smoother in zip(stds, stds[1:])), stds


def _abdomen_slice():
  """A clinical-spec slice: (phantom Slice, its Geometry)."""
  patient = synthetic.make_patient(CLINICAL, 'test', 0)
  pixel_mm = synthetic.patient_pixel_mm(CLINICAL, 'test', 0, patient)
  slice_ = phantoms.render_slice(patient, 0.0, image_size=CLINICAL.image_size,
                                 pixel_size_mm=pixel_mm,
                                 supersample=CLINICAL.supersample)
  return slice_, CLINICAL.geometry(pixel_mm)


def test_streak_energy_rises_as_views_fall():
  """At the clinical geometry, for the dataset's sparse scans (and 32 views):
  noise-free streak RMS over the body rises as views fall, for a windowed
  and an unwindowed kernel."""
  slice_, geometry = _abdomen_slice()
  full = acquisition.forward_project(intensity.hu_to_attenuation(slice_.hu),
                                     geometry)
  body = slice_.masks['body']
  for kernel in ('hann', 'ramp'):
    reference = intensity.attenuation_to_hu(
        acquisition.filtered_backprojection(full, geometry, filter_name=kernel))
    streak_rms = []
    for views in (256, 128, 64, 32):
      sparse = full[acquisition.view_indices(geometry.num_views, views)]
      image = intensity.attenuation_to_hu(
          acquisition.filtered_backprojection(sparse, geometry,
                                              filter_name=kernel))
      streak_rms.append(np.sqrt(np.mean((image - reference)[body]**2)))
    assert streak_rms[0] > 1.0, kernel
    assert all(np.diff(streak_rms) > 0), (kernel, streak_rms)


def test_full_dose_full_view_reconstruction_is_close_to_phantom():
  """Clinical geometry, noise-free FBP (Hann) vs phantom: RMSE 0.8 HU in
  organ interiors (bound 2), mean error < 1 HU; 37 HU over the whole body,
  all of it at bone and gas edges blurred by the Hann window (bound 60).
  With full-dose noise (3 mm slices) the interior RMSE is the noise, 12 HU
  (bound 20)."""
  slice_, geometry = _abdomen_slice()
  full = acquisition.forward_project(intensity.hu_to_attenuation(slice_.hu),
                                     geometry)
  noisy = acquisition.noisy_line_integrals(
      full, photons_per_bin=CLINICAL.photons_per_mm2 * geometry.pixel_size_mm * 3.0,
      dose_fraction=1.0, electronic_noise=CLINICAL.electronic_noise,
      rng=np.random.default_rng(3))
  noise_free, full_dose = intensity.attenuation_to_hu(
      acquisition.filtered_backprojection(np.stack([full, noisy]), geometry))
  interiors = ndimage.binary_erosion(
      slice_.masks['liver'] | slice_.masks['spleen'] | slice_.masks['muscle'],
      iterations=3)
  assert interiors.sum() > 5000
  error = noise_free - slice_.hu
  assert np.sqrt(np.mean(error[interiors]**2)) < 2.0
  assert abs(error[interiors].mean()) < 1.0
  assert np.sqrt(np.mean(error[slice_.masks['body']]**2)) < 60.0
  noisy_error = full_dose - slice_.hu
  assert np.sqrt(np.mean(noisy_error[interiors]**2)) < 20.0


def test_sparse_views_must_divide_full_scan():
  with pytest.raises(ValueError, match='dividing'):
    acquisition.view_indices(256, 100)
  np.testing.assert_array_equal(acquisition.view_indices(256, 4),
                                [0, 64, 128, 192])
