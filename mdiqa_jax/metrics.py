"""Correlation metrics of the LDCTIQAC2023 challenge, in plain numpy.

Each takes (pred, target) 1-D arrays of equal length >= 2 and returns a Python
float. The challenge scores a submission by PLCC, SROCC and KROCC on the raw
predictions (no logistic fitting) and ranks by their sum of absolute values.
"""
from typing import Dict

import numpy as np

# Pairwise Kendall counts are formed in row blocks of this many rows, so memory
# stays O(block * n) while the arithmetic is exact.
_KENDALL_BLOCK_ROWS = 512


def _as_pair(pred, target):
  pred = np.asarray(pred, dtype=np.float64).ravel()
  target = np.asarray(target, dtype=np.float64).ravel()
  if pred.shape != target.shape:
    raise ValueError(
        f'pred and target must have the same length, got {pred.size} and {target.size}.')
  if pred.size < 2:
    raise ValueError(f'need at least 2 samples, got {pred.size}.')
  if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(target))):
    raise ValueError('pred and target must be finite (found NaN or inf).')
  return pred, target


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x = x - x.mean()
  y = y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  if denominator == 0.0:
    return float('nan')  # A constant input has no defined correlation.
  return float(np.sum(x * y) / denominator)


def average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties given the mean of the ranks they span. (N,) -> (N,)."""
  values = np.asarray(values, dtype=np.float64).ravel()
  order = np.argsort(values, kind='stable')
  sorted_values = values[order]
  # Start index of each run of equal values in sorted order.
  run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  run_ends = np.r_[run_starts[1:], values.size]
  mean_rank_of_run = (run_starts + run_ends - 1) / 2.0 + 1.0
  run_of_sorted = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
  ranks = np.empty_like(values)
  ranks[order] = mean_rank_of_run[run_of_sorted]
  return ranks


def plcc(pred, target) -> float:
  """Pearson linear correlation coefficient."""
  return _pearson(*_as_pair(pred, target))


def srocc(pred, target) -> float:
  """Spearman rank-order correlation (Pearson of average ranks)."""
  pred, target = _as_pair(pred, target)
  return _pearson(average_ranks(pred), average_ranks(target))


def krocc(pred, target) -> float:
  """Kendall rank-order correlation, tau-b (ties in either variable handled).

  tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2)), with C/D concordant/discordant
  pairs, n0 = n(n-1)/2, n1/n2 the pairs tied in pred/target.
  """
  pred, target = _as_pair(pred, target)
  n = pred.size
  concordant_minus_discordant = 0.0
  tied_pred = 0.0
  tied_target = 0.0
  for start in range(0, n, _KENDALL_BLOCK_ROWS):
    rows = slice(start, min(start + _KENDALL_BLOCK_ROWS, n))
    sign_pred = np.sign(pred[rows, None] - pred[None, :])
    sign_target = np.sign(target[rows, None] - target[None, :])
    concordant_minus_discordant += np.sum(sign_pred * sign_target)
    tied_pred += np.sum(sign_pred == 0)
    tied_target += np.sum(sign_target == 0)
  # Every unordered pair was counted twice and each i==j "pair" once as a tie.
  total_pairs = n * (n - 1) / 2.0
  concordant_minus_discordant /= 2.0
  tied_pred = (tied_pred - n) / 2.0
  tied_target = (tied_target - n) / 2.0
  denominator = np.sqrt((total_pairs - tied_pred) * (total_pairs - tied_target))
  if denominator == 0.0:
    return float('nan')
  return float(concordant_minus_discordant / denominator)


def overall(pred, target) -> float:
  """The challenge's overall score: |PLCC| + |SROCC| + |KROCC| (max 3)."""
  return abs(plcc(pred, target)) + abs(srocc(pred, target)) + abs(krocc(pred, target))


def all_metrics(pred, target) -> Dict[str, float]:
  """{'plcc', 'srocc', 'krocc', 'overall'} for one set of predictions."""
  values = {
      'plcc': plcc(pred, target),
      'srocc': srocc(pred, target),
      'krocc': krocc(pred, target),
  }
  values['overall'] = sum(abs(v) for v in values.values())
  return values
