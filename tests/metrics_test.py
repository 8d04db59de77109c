"""Metrics against scipy.stats, the independent reference."""
import numpy as np
import pytest
from scipy import stats

from mdiqa_jax import metrics


def _cases():
  rng = np.random.default_rng(0)
  target = rng.normal(size=200)
  yield 'continuous', target + 0.5 * rng.normal(size=200), target
  # Challenge-like labels: 0.2 steps on [0, 4], many ties in the target.
  labels = np.round(rng.uniform(0, 4, size=300) / 0.2) * 0.2
  yield 'tied_target', labels + 0.3 * rng.normal(size=300), labels
  # Ties in both (coarse predictions), and a size above the Kendall block.
  labels = rng.integers(0, 21, size=1100) * 0.2
  pred = np.round(labels + rng.normal(size=1100))
  yield 'ties_both', pred, labels
  yield 'anti', -np.arange(10.0), np.arange(10.0)


@pytest.mark.parametrize('name,pred,target', list(_cases()))
def test_metrics_equal_scipy(name, pred, target):
  del name
  assert metrics.plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0], abs=1e-6)
  assert metrics.srocc(pred, target) == pytest.approx(
      stats.spearmanr(pred, target)[0], abs=1e-6)
  assert metrics.krocc(pred, target) == pytest.approx(
      stats.kendalltau(pred, target, variant='b')[0], abs=1e-6)


def test_overall_is_sum_of_absolute_values():
  rng = np.random.default_rng(1)
  target = rng.normal(size=50)
  pred = -target + rng.normal(size=50)
  expected = (abs(stats.pearsonr(pred, target)[0]) + abs(stats.spearmanr(pred, target)[0])
              + abs(stats.kendalltau(pred, target)[0]))
  assert metrics.overall(pred, target) == pytest.approx(expected, abs=1e-6)
  assert metrics.all_metrics(pred, target)['overall'] == pytest.approx(expected, abs=1e-6)


def test_average_ranks_equal_scipy_rankdata():
  values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 0.5, 1.0])
  np.testing.assert_array_equal(metrics.average_ranks(values), stats.rankdata(values))


def test_metrics_return_python_floats():
  assert isinstance(metrics.krocc([1, 2, 3], [1, 3, 2]), float)


@pytest.mark.parametrize('pred,target,message', [
    ([1.0, 2.0], [1.0], 'same length'),
    ([1.0], [1.0], 'at least 2'),
    ([1.0, np.nan], [1.0, 2.0], 'finite'),
])
def test_bad_input_raises(pred, target, message):
  with pytest.raises(ValueError, match=message):
    metrics.plcc(pred, target)
