"""pseudo_labels: ensemble statistics against explicit loops, exact kept fractions."""
import math

import numpy as np
import pytest

from mdiqa_jax.semi import pseudo_labels


def _teachers(num_teachers=3, num_examples=10, num_scales=2, num_bins=5, seed=0):
  rng = np.random.default_rng(seed)
  scores = rng.uniform(0, 4, size=(num_teachers, num_examples))
  uncertainty = rng.uniform(0.1, 0.8, size=(num_teachers, num_examples))
  logits = rng.normal(size=(num_teachers, num_examples, num_scales, num_bins))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return scores, uncertainty, log_probs


def test_ensemble_statistics_equal_per_slice_loops():
  scores, uncertainty, log_probs = _teachers()
  num_teachers, num_examples = scores.shape
  for n in range(num_examples):
    column = [scores[m, n] for m in range(num_teachers)]
    mean = sum(column) / num_teachers
    variance = sum((s - mean) ** 2 for s in column) / num_teachers
    assert pseudo_labels.ensemble_mean_score(scores)[n] == pytest.approx(mean, abs=1e-12)
    assert pseudo_labels.ensemble_spread(scores)[n] == pytest.approx(math.sqrt(variance),
                                                                     abs=1e-12)
    mixture_variance = sum(uncertainty[m, n] ** 2 for m in range(num_teachers)) / \
        num_teachers + variance
    assert pseudo_labels.total_std(scores, uncertainty)[n] == pytest.approx(
        math.sqrt(mixture_variance), abs=1e-12)
    probs = sum(np.exp(log_probs[m, n]) for m in range(num_teachers)) / num_teachers
    np.testing.assert_allclose(pseudo_labels.mean_distribution(log_probs)[n], probs,
                               atol=1e-12)


def test_single_teacher_has_zero_spread_and_own_uncertainty():
  scores, uncertainty, _ = _teachers(num_teachers=1)
  np.testing.assert_array_equal(pseudo_labels.ensemble_spread(scores), 0.0)
  np.testing.assert_allclose(pseudo_labels.total_std(scores, uncertainty), uncertainty[0])


@pytest.mark.parametrize('num_examples,fraction,expected', [
    (10, 0.3, 3), (100, 0.29, 29), (7, 0.5, 3), (10, 1.0, 10), (3, 0.2, 0), (320, 0.5, 160)])
def test_top_fraction_keeps_exactly_floor_fraction_times_n(num_examples, fraction, expected):
  spread = np.random.default_rng(num_examples).uniform(size=num_examples)
  kept = pseudo_labels.select_most_confident(spread, fraction=fraction)
  assert kept.size == expected == pseudo_labels.num_kept(num_examples, fraction)
  # The kept slices are the lowest-spread ones.
  if 0 < kept.size < num_examples:
    dropped = np.setdiff1d(np.arange(num_examples), kept)
    assert spread[kept].max() <= spread[dropped].min()


def test_top_fraction_breaks_ties_by_index():
  spread = np.array([0.5, 0.1, 0.1, 0.1, 0.9])
  np.testing.assert_array_equal(
      pseudo_labels.select_most_confident(spread, fraction=0.4), [1, 2])


def test_threshold_keeps_spread_at_or_below():
  spread = np.array([0.3, 0.1, 0.25, 0.5, 0.2])
  np.testing.assert_array_equal(
      pseudo_labels.select_most_confident(spread, threshold=0.25), [1, 2, 4])


@pytest.mark.parametrize('kwargs', [{}, {'fraction': 0.5, 'threshold': 0.1},
                                    {'fraction': 0.0}, {'fraction': 1.5},
                                    {'threshold': -1.0}])
def test_bad_confidence_filters_raise(kwargs):
  with pytest.raises(ValueError, match='config.semi'):
    pseudo_labels.select_most_confident(np.ones(4), **kwargs)


def test_select_for_student_strategies():
  scores, uncertainty, log_probs = _teachers(num_examples=20)
  mean = scores.mean(0)
  hard = pseudo_labels.select_for_student(scores, uncertainty, log_probs, strategy='hard',
                                          weight=0.5)
  np.testing.assert_array_equal(hard['index'], np.arange(20))
  np.testing.assert_allclose(hard['score'], mean, rtol=1e-6)
  np.testing.assert_array_equal(hard['weight'], 0.5)
  assert 'target_probs' not in hard

  soft = pseudo_labels.select_for_student(scores, uncertainty, log_probs, strategy='soft',
                                          weight=1.0)
  np.testing.assert_allclose(soft['target_probs'], np.exp(log_probs).mean(0), atol=1e-6)

  confident = pseudo_labels.select_for_student(
      scores, uncertainty, log_probs, strategy='confidence', weight=1.0, fraction=0.25)
  expected = np.sort(np.argsort(scores.std(0), kind='stable')[:5])
  np.testing.assert_array_equal(confident['index'], expected)
  np.testing.assert_allclose(confident['score'], mean[expected], rtol=1e-6)
  by_total = pseudo_labels.select_for_student(
      scores, uncertainty, log_probs, strategy='confidence', weight=1.0, fraction=0.25,
      confidence_measure='total_std')
  total = np.sqrt((uncertainty ** 2).mean(0) + scores.var(0))
  np.testing.assert_array_equal(by_total['index'],
                                np.sort(np.argsort(total, kind='stable')[:5]))


def test_select_for_student_errors_name_the_field():
  scores, uncertainty, _ = _teachers(num_teachers=1)
  with pytest.raises(ValueError, match='confidence_measure'):
    pseudo_labels.select_for_student(scores, uncertainty, None, strategy='confidence',
                                     weight=1.0, fraction=0.5)
  with pytest.raises(ValueError, match="strategy='soft'"):
    pseudo_labels.select_for_student(scores, uncertainty, None, strategy='soft', weight=1.0)
  with pytest.raises(ValueError, match='config.semi.strategy'):
    pseudo_labels.select_for_student(scores, uncertainty, None, strategy='mean', weight=1.0)
