"""Tests of the synthetic dataset API (synthetic.py): labels, determinism, splits."""
import dataclasses

import numpy as np
import pytest
from scipy import stats

from mdiqa_jax.data import synthetic

# A quick 64-px dataset for format and determinism checks.
TINY_SPEC = synthetic.SyntheticSpec(
    image_size=64,
    num_views_full=128,
    split_patients={'train': 3, 'validation': 2, 'test': 2, 'unlabeled': 2},
    slices_per_patient=2,
    dose_fractions=(1.0, 0.5, 0.25),
    sparse_views=(16, 32),
    photons_per_bin=3e4,
    seed=7,
)


def test_split_sizes_are_patients_times_slices():
  assert synthetic.split_sizes(TINY_SPEC) == {
      'train': 6, 'validation': 4, 'test': 4, 'unlabeled': 4}
  small = synthetic.split_sizes(synthetic.SMALL_SPEC)
  challenge = synthetic.split_sizes(synthetic.CHALLENGE_SPEC)
  assert (challenge['train'], challenge['validation'], challenge['test']) == (
      1000, 200, 300)
  assert sum(small.values()) > 1000


def test_example_has_the_documented_fields():
  key, example = synthetic.generate_example(TINY_SPEC, 'train', 3)
  assert key == 'train-00001-001'
  assert set(example) == {'image', 'score', 'rater_scores', 'dose_fraction',
                          'views', 'patient_id', 'slice_index'}
  assert example['image'].shape == (64, 64, 1)
  assert example['image'].dtype == np.float32
  assert 0.0 <= example['image'].min() and example['image'].max() <= 1.0
  assert example['rater_scores'].shape == (5,)
  assert example['rater_scores'].dtype == np.float32
  assert example['score'].dtype == np.float32
  assert example['dose_fraction'].dtype == np.float32
  assert example['views'].dtype == np.int32
  assert example['slice_index'] == 1
  assert example['patient_id'] == 'train-00001'
  assert (float(example['dose_fraction']), int(example['views'])) in (
      synthetic.degradation_grid(TINY_SPEC))


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
  """Mean label per grid cell over 6 slices of the small dataset: Spearman
  with dose (at full views) and with views (at full dose) is exactly 1;
  every label is the mean of integer rater scores in 0..4."""
  spec = synthetic.SMALL_SPEC
  panel = synthetic.make_panel(spec)
  worst = (min(spec.dose_fractions), min(spec.sparse_views))
  cells = [(dose, views) for dose, views in synthetic.degradation_grid(spec)
           if views == spec.num_views_full or dose == 1.0 or
           (dose, views) == worst]
  mean_score = {}
  for dose, views in cells:
    scores = []
    for patient in range(6):
      example = synthetic.simulate_scan(spec, 'validation', patient, patient,
                                        dose, views, panel).example
      rater_scores = example['rater_scores']
      np.testing.assert_array_equal(rater_scores, np.round(rater_scores))
      assert rater_scores.min() >= 0 and rater_scores.max() <= 4
      assert example['score'] == pytest.approx(rater_scores.mean(), abs=1e-6)
      scores.append(example['score'])
    mean_score[dose, views] = np.mean(scores)
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
    synthetic.generate_example(TINY_SPEC, 'train', 6)
  with pytest.raises(ValueError, match='sparse_views'):
    dataclasses.replace(TINY_SPEC, sparse_views=(48,))
  with pytest.raises(ValueError, match='dose_fractions'):
    dataclasses.replace(TINY_SPEC, dose_fractions=(1.0, 1.5))
  with pytest.raises(ValueError, match='full_view_weight'):
    dataclasses.replace(TINY_SPEC, full_view_weight=0.0)
  with pytest.raises(ValueError, match='split_patients'):
    dataclasses.replace(TINY_SPEC, split_patients={'dev': 2})
