"""Physics checks of the CT acquisition simulator (acquisition.py, intensity.py)."""
import numpy as np
import pytest
from scipy import ndimage

from mdiqa_jax.data import acquisition
from mdiqa_jax.data import intensity
from mdiqa_jax.data import phantoms
from mdiqa_jax.data import synthetic

# The small dataset's geometry: 128 px of 3 mm, 256 views.
GEOMETRY = synthetic.SMALL_SPEC.geometry
MU_WATER = intensity.MU_WATER_PER_MM


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
  # Sum over bins of bin-averaged line integrals x bin width = pixel area.
  np.testing.assert_allclose(sinogram.sum(axis=1) * GEOMETRY.pixel_size_mm,
                             GEOMETRY.pixel_size_mm**2, rtol=1e-5)


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


def test_chunked_operators_equal_cached_matrices(monkeypatch):
  rng = np.random.default_rng(0)
  mu = rng.uniform(0.0, 0.03, (64, 64))
  geometry = acquisition.Geometry(64, 6.0, 128)
  cached = acquisition.forward_project(mu, geometry, 32)
  cached_image = acquisition.filtered_backprojection(cached, geometry)
  monkeypatch.setattr(acquisition, '_MAX_CACHED_NONZEROS', 0)
  chunked = acquisition.forward_project(mu, geometry, 32)
  np.testing.assert_allclose(chunked, cached, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      acquisition.filtered_backprojection(cached, geometry), cached_image,
      atol=1e-6)


def test_fbp_of_uniform_disk_recovers_its_attenuation():
  radius = 45.0
  mu = MU_WATER * _disk(GEOMETRY.image_size, radius)
  sinogram = acquisition.forward_project(mu, GEOMETRY)
  for filter_name in ('ramp', 'hann'):
    image = acquisition.filtered_backprojection(sinogram, GEOMETRY,
                                                filter_name=filter_name)
    inner = _disk(GEOMETRY.image_size, radius - 4.0) == 1.0
    outer = _disk(GEOMETRY.image_size, radius + 4.0) == 0.0
    hu = intensity.attenuation_to_hu(image)
    assert abs(hu[inner].mean()) < 2.0, filter_name
    assert hu[inner].std() < 3.0, filter_name
    assert abs(image[outer].mean()) < 0.002 * MU_WATER, filter_name


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


def test_noise_std_scales_as_inverse_sqrt_dose_in_water_cylinder():
  """std(dose d) / std(full dose) = 1 / sqrt(d) within 10 %, d = 0.5, 0.25."""
  spec = synthetic.SMALL_SPEC
  radius = 35.0  # pixels: a 21 cm water cylinder.
  mu = MU_WATER * _disk(GEOMETRY.image_size, radius)
  clean = acquisition.forward_project(mu, GEOMETRY)
  roi = _disk(GEOMETRY.image_size, radius - 8.0) == 1.0
  rng = np.random.default_rng(2)

  def noise_std(dose_fraction, realisations=3):
    noisy = [acquisition.noisy_line_integrals(
        clean, photons_per_bin=spec.photons_per_bin,
        dose_fraction=dose_fraction, electronic_noise=spec.electronic_noise,
        rng=rng) for _ in range(realisations)]
    images = acquisition.filtered_backprojection(np.stack(noisy + [clean]),
                                                 GEOMETRY)
    noise = intensity.attenuation_to_hu(images[:-1]) - intensity.attenuation_to_hu(
        images[-1])
    return float(np.sqrt(np.mean(noise[:, roi]**2)))

  full = noise_std(1.0)
  assert 3.0 < full < 30.0  # A plausible CT noise level, HU.
  for dose_fraction in (0.5, 0.25):
    ratio = noise_std(dose_fraction) / full
    assert ratio == pytest.approx(1.0 / np.sqrt(dose_fraction), rel=0.1)


def _abdomen_slice():
  spec = synthetic.SMALL_SPEC
  patient = synthetic.make_patient(spec, 'test', 0)
  return phantoms.render_slice(patient, 0.0, image_size=spec.image_size,
                               pixel_size_mm=GEOMETRY.pixel_size_mm,
                               supersample=spec.supersample)


def test_streak_energy_rises_as_views_fall():
  slice_ = _abdomen_slice()
  full = acquisition.forward_project(intensity.hu_to_attenuation(slice_.hu),
                                     GEOMETRY)
  reference = intensity.attenuation_to_hu(
      acquisition.filtered_backprojection(full, GEOMETRY))
  body = slice_.masks['body']
  streak_rms = []
  for views in (128, 64, 32, 16):
    sparse = full[acquisition.view_indices(GEOMETRY.num_views, views)]
    image = intensity.attenuation_to_hu(
        acquisition.filtered_backprojection(sparse, GEOMETRY))
    streak_rms.append(np.sqrt(np.mean((image - reference)[body]**2)))
  assert streak_rms[0] > 0.0
  assert all(np.diff(streak_rms) > 0), streak_rms


def test_full_dose_full_view_reconstruction_is_close_to_phantom():
  """Noise-free FBP (Hann) vs phantom: RMSE ~3 HU in organ interiors (bound
  5), mean error < 1 HU; ~75 HU over the whole body, all of it at bone and
  gas edges blurred by the Hann filter (bound 100). With full-dose noise the
  interior RMSE is the noise, ~14 HU (bound 20)."""
  spec = synthetic.SMALL_SPEC
  slice_ = _abdomen_slice()
  full = acquisition.forward_project(intensity.hu_to_attenuation(slice_.hu),
                                     GEOMETRY)
  noisy = acquisition.noisy_line_integrals(
      full, photons_per_bin=spec.photons_per_bin, dose_fraction=1.0,
      electronic_noise=spec.electronic_noise, rng=np.random.default_rng(3))
  noise_free, full_dose = intensity.attenuation_to_hu(
      acquisition.filtered_backprojection(np.stack([full, noisy]), GEOMETRY))
  interiors = ndimage.binary_erosion(
      slice_.masks['liver'] | slice_.masks['spleen'] | slice_.masks['muscle'],
      iterations=2)
  assert interiors.sum() > 500
  error = noise_free - slice_.hu
  assert np.sqrt(np.mean(error[interiors]**2)) < 5.0
  assert abs(error[interiors].mean()) < 1.0
  assert np.sqrt(np.mean(error[slice_.masks['body']]**2)) < 100.0
  noisy_error = full_dose - slice_.hu
  assert np.sqrt(np.mean(noisy_error[interiors]**2)) < 20.0


def test_sparse_views_must_divide_full_scan():
  with pytest.raises(ValueError, match='dividing'):
    acquisition.view_indices(256, 100)
  np.testing.assert_array_equal(acquisition.view_indices(256, 4),
                                [0, 64, 128, 192])
