"""Tests of the synthetic dataset API (synthetic.py): labels, determinism, splits."""
import dataclasses
import zlib

import numpy as np
import pytest
from scipy import stats

from mdiqa_jax.data import acquisition
from mdiqa_jax.data import phantoms
from mdiqa_jax.data import raters
from mdiqa_jax.data import synthetic

# A quick 64-px dataset (coarse pixels, so the phantom fits) for format and
# determinism checks.
TINY_SPEC = dataclasses.replace(
    synthetic.CLINICAL_SPEC,
    image_size=64,
    num_views_full=128,
    split_patients={'train': 3, 'validation': 2, 'test': 2, 'unlabeled': 2},
    slices_per_patient=2,
    dose_fractions=(1.0, 0.5, 0.25),
    sparse_views=(16, 32),
    pixel_mm_range=(4.5, 7.5),
    seed=7,
)
CLINICAL = synthetic.CLINICAL_SPEC


def test_split_sizes_are_patients_times_slices_times_degradations():
  assert synthetic.split_sizes(TINY_SPEC) == {
      'train': 12, 'validation': 8, 'test': 8, 'unlabeled': 8}
  clinical = synthetic.split_sizes(CLINICAL)
  challenge = synthetic.split_sizes(synthetic.CHALLENGE_SPEC)
  assert (challenge['train'], challenge['validation'], challenge['test']) == (
      1000, 200, 300)
  assert clinical['test'] >= 128 and clinical['train'] >= 256
  assert synthetic.CHALLENGE_SPEC.image_size == CLINICAL.image_size == 512


def test_example_has_the_documented_fields():
  key, example = synthetic.generate_example(TINY_SPEC, 'train', 7)
  assert key == 'train-00001-001-1'
  assert set(example) == {'image', 'score', 'rater_scores', 'dose_fraction',
                          'views', 'pixel_mm', 'slice_thickness_mm', 'kernel',
                          'patient_id', 'slice_index'}
  assert example['image'].shape == (64, 64, 1)
  assert example['image'].dtype == np.uint8
  assert example['rater_scores'].shape == (5,)
  assert example['rater_scores'].dtype == np.float32
  for name in ('score', 'dose_fraction', 'pixel_mm', 'slice_thickness_mm'):
    assert example[name].dtype == np.float32, name
  assert example['views'].dtype == np.int32
  assert example['slice_index'] == 1
  assert example['patient_id'] == 'train-00001'
  assert example['kernel'] in acquisition.FILTERS
  assert float(example['slice_thickness_mm']) in TINY_SPEC.slice_thicknesses_mm
  assert (float(example['dose_fraction']), int(example['views'])) in (
      synthetic.degradation_grid(TINY_SPEC))


def test_stored_image_is_the_windowed_reconstruction_in_255_steps():
  spec = TINY_SPEC
  scan = synthetic.simulate_scan(spec, 'test', 1, 0, 0.5, 32)
  unit = np.clip((scan.image_hu - (spec.window_level - spec.window_width / 2))
                 / spec.window_width, 0.0, 1.0)
  np.testing.assert_array_equal(scan.example['image'][..., 0],
                                np.round(unit * 255.0).astype(np.uint8))


def test_degradations_of_a_slice_share_anatomy_and_reconstruction():
  """A rendered slice's examples: distinct grid cells, one kernel and one
  thickness, the same patient, slice and spacing."""
  examples = [example for _, example in synthetic.generate_slice(
      TINY_SPEC, 'validation', 1, 1)]
  assert len(examples) == TINY_SPEC.degradations_per_slice == 2
  cells = {(float(e['dose_fraction']), int(e['views'])) for e in examples}
  assert len(cells) == 2
  for name in ('kernel', 'slice_thickness_mm', 'pixel_mm', 'patient_id',
               'slice_index'):
    assert len({str(e[name]) for e in examples}) == 1, name


def test_pixel_spacing_is_drawn_per_patient_in_the_clinical_range():
  """Field of view fitted to the (scaled) body with a margin, clipped to
  PIXEL_MM_RANGE: the spacing stays in range, varies between patients, the
  body fits in the field of view; adults lie in the abdominal 0.6-0.95 mm,
  small patients below."""
  assert synthetic.PIXEL_MM_RANGE == (0.4, 0.95) == CLINICAL.pixel_mm_range
  spacings, small = [], []
  for split in synthetic.SPLITS:
    for index in range(25):
      patient = synthetic.make_patient(CLINICAL, split, index)
      pixel_mm = synthetic.patient_pixel_mm(CLINICAL, split, index)
      scale = synthetic.patient_scale(CLINICAL, split, index)
      assert 0.4 <= pixel_mm <= 0.95
      assert scale * patient.body_width_mm < 0.97 * CLINICAL.image_size * pixel_mm
      assert synthetic.render_pixel_mm(CLINICAL, split, index) == pytest.approx(
          pixel_mm / scale)
      if scale == 1.0:
        assert pixel_mm >= 0.6  # Adult abdomens: the clinical 0.6-0.95 mm.
      else:
        assert 0.55 <= scale <= 0.85
        small.append(pixel_mm)
      spacings.append(pixel_mm)
  assert np.ptp(spacings) > 0.4
  assert len(set(spacings)) > 90
  assert 0.15 < len(small) / len(spacings) < 0.5  # small_patient_fraction 0.3 of 100.
  assert np.mean(np.array(small) < 0.6) > 0.6


def test_generation_is_deterministic_and_splits_are_patient_disjoint():
  key, example = synthetic.generate_example(TINY_SPEC, 'validation', 2)
  key_again, example_again = synthetic.generate_example(TINY_SPEC, 'validation', 2)
  assert key == key_again
  for name in example:
    np.testing.assert_array_equal(example[name], example_again[name])
  ids = {split: {ex['patient_id'] for _, ex in synthetic.generate_split(
      TINY_SPEC, split)} for split in TINY_SPEC.split_patients}
  assert sum(len(v) for v in ids.values()) == len(set().union(*ids.values()))
  # Different splits hold different anatomy, not relabelled copies.
  train = synthetic.simulate_scan(TINY_SPEC, 'train', 0, 0, 1.0, 128)
  test = synthetic.simulate_scan(TINY_SPEC, 'test', 0, 0, 1.0, 128)
  assert np.abs(train.phantom_hu - test.phantom_hu).mean() > 10.0
  # A different dataset seed changes the patients.
  reseeded = synthetic.simulate_scan(dataclasses.replace(TINY_SPEC, seed=8),
                                     'train', 0, 0, 1.0, 128)
  assert np.abs(train.phantom_hu - reseeded.phantom_hu).mean() > 10.0


def test_labels_fall_monotonically_with_dose_and_views():
  """Clinical spec, adult-sized abdomens, cosine kernel at 2 mm (full-dose
  noise above the raters' 'excellent' level, so that every dose step counts;
  a chest has about half an abdomen's noise, excellent at the top doses),
  mean label per grid cell over 6 slices: Spearman with dose (at full views) and with views (at
  full dose) is exactly 1; every label is the mean of integer rater scores
  in 0..4."""
  spec = CLINICAL
  panel = synthetic.make_panel(spec)
  worst = (min(spec.dose_fractions), min(spec.sparse_views))
  cells = [(dose, views) for dose, views in synthetic.degradation_grid(spec)
           if views == spec.num_views_full or dose == 1.0 or
           (dose, views) == worst]
  degradations = tuple(synthetic.Degradation(dose, views, 'cosine', 2.0)
                       for dose, views in cells)
  scores = []
  adults = [i for i in range(30) if synthetic.patient_scale(spec, 'validation', i) == 1.0
            and not synthetic.is_thorax(spec, 'validation', i)]
  for patient in adults[:6]:
    scans = synthetic.simulate_scans(spec, 'validation', patient, patient % 2,
                                     degradations, panel)
    for scan in scans:
      rater_scores = scan.example['rater_scores']
      np.testing.assert_array_equal(rater_scores, np.round(rater_scores))
      assert rater_scores.min() >= 0 and rater_scores.max() <= 4
      assert scan.example['score'] == pytest.approx(rater_scores.mean(),
                                                    abs=1e-6)
    scores.append([scan.example['score'] for scan in scans])
  mean_score = dict(zip(cells, np.mean(scores, axis=0)))
  doses = sorted(spec.dose_fractions)
  by_dose = [mean_score[dose, spec.num_views_full] for dose in doses]
  views = sorted(spec.sparse_views) + [spec.num_views_full]
  by_views = [mean_score[1.0, count] for count in views]
  assert stats.spearmanr(doses, by_dose).statistic == pytest.approx(1.0)
  assert stats.spearmanr(views, by_views).statistic == pytest.approx(1.0)
  # The grid spans the Likert scale.
  assert max(mean_score.values()) > 3.0 and min(mean_score.values()) < 1.0


def test_bad_requests_name_the_problem():
  with pytest.raises(ValueError, match='Unknown split'):
    synthetic.generate_example(TINY_SPEC, 'training', 0)
  with pytest.raises(ValueError, match='out of range'):
    synthetic.generate_example(TINY_SPEC, 'train', 12)
  bad_fields = {
      'sparse_views': {'sparse_views': (48,)},
      'dose_fractions': {'dose_fractions': (1.0, 1.5)},
      'full_view_weight': {'full_view_weight': 0.0},
      'split_patients': {'split_patients': {'dev': 2}},
      'degradations_per_slice': {'degradations_per_slice': 10},
      'kernels': {'kernels': ('ramp', 'sharp')},
      'slice_thicknesses_mm': {'slice_thicknesses_mm': (0.0,)},
      'pixel_mm_range': {'pixel_mm_range': (0.9, 0.6)},
      'field_of_view_margin': {'field_of_view_margin': (0.0, 1.0)},
      'thorax_fraction': {'thorax_fraction': 1.5},
  }
  for field, change in bad_fields.items():
    with pytest.raises(ValueError, match=field):
      dataclasses.replace(TINY_SPEC, **change)


def test_thorax_draws_are_deterministic_at_the_set_fraction():
  """Over 400 patients the chests are within 3 binomial standard errors of
  thorax_fraction; the draw is a function of (seed, split, index)."""
  def chests(spec, split='train'):
    return [synthetic.is_thorax(spec, split, index) for index in range(400)]

  drawn = chests(CLINICAL)
  assert drawn == chests(CLINICAL)
  assert drawn != chests(CLINICAL, 'test')
  assert drawn != chests(dataclasses.replace(CLINICAL, seed=1))
  fraction = CLINICAL.thorax_fraction
  assert fraction == 0.4
  assert abs(np.mean(drawn) - fraction) < 3.0 * np.sqrt(fraction * (1 - fraction) / 400)
  assert not any(chests(dataclasses.replace(CLINICAL, thorax_fraction=0.0)))
  assert all(chests(dataclasses.replace(CLINICAL, thorax_fraction=1.0)))
  for index in np.flatnonzero(drawn)[:3]:
    patient = synthetic.make_patient(CLINICAL, 'train', int(index))
    assert 'lung' in patient.tissue_hu and 'liver' not in patient.tissue_hu


def test_no_thorax_fraction_gives_the_abdomen_only_patients():
  """thorax_fraction=0: every patient is the abdomen drawn from the seed
  [dataset seed, crc32(split), index] (the anatomy of builder 2.1.0); with
  chests switched on, the patients that stay abdomens keep that anatomy."""
  abdomens = dataclasses.replace(CLINICAL, thorax_fraction=0.0)
  for split in ('train', 'test'):
    for index in range(8):
      seed = [CLINICAL.seed, zlib.crc32(split.encode()), index]
      expected = phantoms.sample_patient(
          np.random.default_rng(seed), zlib.crc32(repr(seed).encode()),
          CLINICAL.slices_per_patient * CLINICAL.slice_spacing_mm)
      assert synthetic.make_patient(abdomens, split, index) == expected
      mixed = synthetic.make_patient(CLINICAL, split, index)
      assert (mixed == expected) != synthetic.is_thorax(CLINICAL, split, index)


def test_raters_take_the_thorax_noise_from_its_muscle():
  """A chest has no liver or spleen: the noise ROI is its pure muscle (noise
  of 20 HU there, 60 HU elsewhere reads 20 HU), and a simulated chest scan
  is rated like any other."""
  patient = phantoms.sample_thorax_patient(np.random.default_rng(0), 0, 15.0)
  slice_ = phantoms.render_slice(patient, 0.0, image_size=160, pixel_size_mm=2.5)
  muscle = slice_.masks['muscle']
  assert muscle.sum() > 500
  rng = np.random.default_rng(1)
  noise = np.where(muscle, 20.0, 60.0) * rng.standard_normal(slice_.hu.shape)
  measured = raters.measure(slice_.hu + noise, slice_.hu, slice_.hu, slice_)
  assert measured.noise_hu == pytest.approx(20.0, rel=0.1)
  assert measured.streak_hu == 0.0 and measured.lesion_cnr == float('inf')
  chests = dataclasses.replace(TINY_SPEC, thorax_fraction=1.0)
  full, low = synthetic.simulate_scans(
      chests, 'train', 0, 0, (synthetic.Degradation(1.0, 128, 'hann', 3.0),
                              synthetic.Degradation(0.25, 128, 'hann', 3.0)))
  assert 0.0 < full.measurements.noise_hu < low.measurements.noise_hu
  assert 0.0 <= low.example['score'] <= full.example['score'] <= 4.0
