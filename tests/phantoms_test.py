"""Tests of the digital abdominal phantoms (phantoms.py)."""
import numpy as np
import pytest

from mdiqa_jax.data import phantoms

SIZE, PIXEL_MM = 96, 4.0


def _patient(seed, z_range_mm=40.0):
  return phantoms.sample_patient(np.random.default_rng(seed), seed, z_range_mm)


def _render(patient, z_mm=0.0, **kwargs):
  return phantoms.render_slice(patient, z_mm, image_size=SIZE,
                               pixel_size_mm=PIXEL_MM, **kwargs)


def test_render_is_deterministic_and_shaped():
  first, second = _render(_patient(0)), _render(_patient(0))
  assert first.hu.shape == (SIZE, SIZE) and first.hu.dtype == np.float32
  np.testing.assert_array_equal(first.hu, second.hu)
  for name in ('body', 'liver', 'spleen', 'muscle', 'lesion'):
    assert first.masks[name].shape == (SIZE, SIZE)
    assert first.masks[name].dtype == bool


def test_pure_tissue_pixels_have_the_patients_tissue_values():
  patient = _patient(3)
  slice_ = _render(patient)
  for name in ('liver', 'muscle'):
    mask = slice_.masks[name]
    assert mask.sum() > 50, name
    texture_std = phantoms.TISSUES[name][2]
    # The mean of a smooth unit-variance texture over many pixels is near 0.
    assert slice_.hu[mask].mean() == pytest.approx(
        patient.tissue_hu[name], abs=texture_std)
    # Texture makes organs non-flat, at about the tabulated amplitude.
    assert 0.3 * texture_std < slice_.hu[mask].std() < 3.0 * texture_std


def test_slice_holds_abdominal_tissues_in_soft_tissue_range():
  slice_ = _render(_patient(1))
  body = slice_.masks['body']
  assert 0.3 < body.mean() < 0.8  # The body fills much of the field of view.
  assert slice_.hu.min() >= -1000.0 - 100.0
  assert (slice_.hu > 500).sum() > 10  # Bone.
  assert (slice_.hu[body] < -500).sum() > 5  # Bowel or stomach gas.
  fat = (slice_.hu[body] > -150) & (slice_.hu[body] < -50)
  assert fat.mean() > 0.1


def test_lesions_have_their_contrast_against_liver():
  for seed in range(40):
    patient = _patient(seed, z_range_mm=10.0)
    slice_ = _render(patient, supersample=3)
    if slice_.lesions and slice_.masks['liver'].sum() > 100:
      break
  else:
    pytest.fail('no lesion cut by slice 0 in 40 patients')
  liver_hu = slice_.hu[slice_.masks['liver']].mean()
  for mask, contrast in slice_.lesions:
    assert 10.0 <= abs(contrast) <= 30.0
    assert slice_.hu[mask].mean() - liver_hu == pytest.approx(contrast, abs=8.0)


def test_patients_differ_and_neighbouring_slices_are_similar():
  bodies = [_render(_patient(seed)).masks['body'].sum() for seed in range(6)]
  assert np.ptp(bodies) > 0.1 * np.mean(bodies)  # Body size varies.
  patient = _patient(2)
  near, next_ = _render(patient, 0.0), _render(patient, 7.5)
  other = _render(_patient(4), 0.0)

  def overlap(a, b):
    return (a & b).sum() / (a | b).sum()

  assert not np.array_equal(near.hu, next_.hu)
  assert overlap(near.masks['body'], next_.masks['body']) > 0.9
  assert (overlap(near.masks['liver'], next_.masks['liver']) >
          overlap(near.masks['liver'], other.masks['liver']))


def test_supersampling_gives_partial_volume_edges():
  patient = _patient(5)
  sharp = _render(patient, supersample=1)
  smooth = _render(patient, supersample=4)
  # Area averaging creates intermediate values at the skin-air edge.
  edge_values = lambda hu: ((hu > -900) & (hu < -200)).sum()
  assert edge_values(smooth.hu) > edge_values(sharp.hu)


def test_edge_supersampling_equals_area_averaging_every_pixel(monkeypatch):
  """Supersampling only the pixels near a boundary gives the image (and the
  pure-tissue masks) of averaging s x s sub-pixels in every pixel: the
  brute-force render at s times the resolution, block-averaged. Textures
  are switched off (they are shared by a pixel's sub-pixels by design)."""
  for name, (mean, spread, _, grain) in phantoms.TISSUES.items():
    monkeypatch.setitem(phantoms.TISSUES, name, (mean, spread, 0.0, grain))
  supersample = 3
  patient = _patient(6)
  slice_ = _render(patient, supersample=supersample)
  fine = phantoms.render_slice(patient, 0.0, image_size=SIZE * supersample,
                               pixel_size_mm=PIXEL_MM / supersample,
                               supersample=1)
  blocks = fine.hu.reshape(SIZE, supersample, SIZE, supersample)
  np.testing.assert_allclose(slice_.hu, blocks.mean(axis=(1, 3)), atol=1e-3)
  for name in ('body', 'liver', 'muscle'):
    fine_mask = fine.masks[name].reshape(SIZE, supersample, SIZE, supersample)
    np.testing.assert_array_equal(slice_.masks[name], fine_mask.all(axis=(1, 3)))


def test_body_width_is_the_outline_width():
  patient = _patient(7)
  body = _render(patient, supersample=1).masks['body']
  columns = np.flatnonzero(body.any(axis=0))
  width_mm = (columns[-1] - columns[0] + 1) * PIXEL_MM
  assert width_mm == pytest.approx(patient.body_width_mm, rel=0.1)
