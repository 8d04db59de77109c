"""Tests of the digital abdominal and thoracic phantoms (phantoms.py)."""
import numpy as np
import pytest
from scipy import ndimage

from mdiqa_jax.data import phantoms

SIZE, PIXEL_MM = 96, 4.0
THORAX_SIZE = 112  # 448 mm at PIXEL_MM: the widest chests fit.


def _patient(seed, z_range_mm=40.0):
  return phantoms.sample_patient(np.random.default_rng(seed), seed, z_range_mm)


def _thorax(seed, z_range_mm=15.0):
  return phantoms.sample_thorax_patient(np.random.default_rng(seed), seed,
                                        z_range_mm)


def _render_thorax(patient, z_mm=0.0):
  return phantoms.render_slice(patient, z_mm, image_size=THORAX_SIZE,
                               pixel_size_mm=PIXEL_MM, supersample=3)


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


def test_abdomen_draws_its_tissue_values_then_its_size_first():
  """sample_patient's first draws, recomputed from numpy: one standard
  normal per tissue with a spread (all 24 but air, in the table's order:
  couch shell 250 +- 30, couch core -850 +- 30, skin 30 +- 10, ..., liver
  105 +- 15 seventh), then the lateral semi-axis U(140, 185) mm; the
  thorax tissues added to TISSUES take no draws from an abdomen."""
  for seed in range(3):
    patient = _patient(seed)
    rng = np.random.default_rng(seed)
    standard = rng.standard_normal(24)
    assert patient.tissue_hu['couch_shell'] == pytest.approx(250.0 + 30.0 * standard[0])
    assert patient.tissue_hu['couch_core'] == pytest.approx(-850.0 + 30.0 * standard[1])
    assert patient.tissue_hu['skin'] == pytest.approx(30.0 + 10.0 * standard[2])
    assert patient.tissue_hu['liver'] == pytest.approx(105.0 + 15.0 * standard[6])
    assert patient.body_width_mm == pytest.approx(2.0 * rng.uniform(140.0, 185.0))
    assert 'lung' not in patient.tissue_hu and 'heart' not in patient.tissue_hu
    assert not {shape.tissue for shape in patient.shapes} & {
        'lung', 'heart', 'mediastinal_fat', 'pulmonary_vessel', 'great_vessel'}


def test_thorax_slice_has_two_lungs_bone_fat_and_a_muscle_roi():
  for seed in range(3):
    patient = _thorax(seed)
    slice_ = _render_thorax(patient)
    body = slice_.masks['body']
    x = (np.arange(THORAX_SIZE) - (THORAX_SIZE - 1) / 2.0) * PIXEL_MM
    # Lungs: the two largest air-density regions inside the body, one each
    # side of the midline, together a fifth of the body or more.
    labels, count = ndimage.label(body & (slice_.hu < -700))
    sizes = ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))
    lungs = np.argsort(sizes)[::-1][:2] + 1
    assert sizes[lungs - 1].sum() > 0.2 * body.sum(), seed
    sides = sorted(np.sign(x[np.nonzero(labels == lung)[1]].mean()) for lung in lungs)
    assert sides == [-1.0, 1.0], seed
    lung_hu = np.median(slice_.hu[labels == lungs[0]])
    assert -950.0 < lung_hu < -750.0
    assert lung_hu == pytest.approx(patient.tissue_hu['lung'], abs=30.0)
    # Bone: spine and sternum near the midline, ribs out in the wall.
    bone = slice_.hu > 500.0
    assert bone.sum() > 20, seed
    lateral = np.abs(x)[None, :] > 0.3 * patient.body_width_mm
    assert (bone & lateral & (x[None, :] < 0)).any() and (
        bone & lateral & (x[None, :] > 0)).any(), seed
    fat = (slice_.hu[body] > -150.0) & (slice_.hu[body] < -50.0)
    assert fat.mean() > 0.05, seed
    # The raters' noise ROI: pure chest-wall and paraspinal muscle.
    muscle = slice_.masks['muscle']
    assert muscle.sum() > 100, seed
    assert slice_.hu[muscle].mean() == pytest.approx(
        patient.tissue_hu['muscle'], abs=8.0)
    for name in ('liver', 'spleen', 'lesion'):
      assert slice_.masks[name].shape == body.shape and not slice_.masks[name].any()
    assert slice_.lesions == () and patient.lesion_contrast_hu == {}


def test_thorax_tissue_values_and_size_are_textbook():
  expected_hu = {'lung': (-950.0, -750.0), 'heart': (15.0, 65.0),
                 'mediastinal_fat': (-150.0, -50.0), 'muscle': (25.0, 80.0),
                 'pulmonary_vessel': (0.0, 80.0), 'airway': (-1030.0, -950.0),
                 'cortical_bone': (500.0, 1600.0)}
  enhanced = []
  for seed in range(30):
    patient = _thorax(seed)
    for name, (low, high) in expected_hu.items():
      assert low < patient.tissue_hu[name] < high, (seed, name)
    vessel_hu = patient.tissue_hu['great_vessel']
    assert 20.0 < vessel_hu < 65.0 or 90.0 < vessel_hu < 280.0, seed
    enhanced.append(vessel_hu > 90.0)
    assert 290.0 <= patient.body_width_mm <= 380.0
  assert 0 < sum(enhanced) < 30  # Contrast and unenhanced chests both occur.
  body = _render_thorax(_thorax(1)).masks['body']
  rows, columns = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
  width_mm = (columns[-1] - columns[0] + 1) * PIXEL_MM
  assert width_mm == pytest.approx(_thorax(1).body_width_mm, rel=0.1)
  assert 0.55 < (rows[-1] - rows[0] + 1) / (columns[-1] - columns[0] + 1) < 0.8


def test_thorax_slices_are_neighbouring_cross_sections():
  patient = _thorax(2)
  near, next_ = _render_thorax(patient, 0.0), _render_thorax(patient, 7.5)
  other = _render_thorax(_thorax(5))
  # The lungs with the vessels and bronchi in them.
  lung = lambda s: ndimage.binary_fill_holes(s.masks['body'] & (s.hu < -700))

  def overlap(a, b):
    return (a & b).sum() / (a | b).sum()

  assert not np.array_equal(near.hu, next_.hu)
  assert overlap(lung(near), lung(next_)) > 0.85
  assert overlap(lung(near), lung(next_)) > overlap(lung(near), lung(other))
