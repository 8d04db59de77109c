"""Pseudo-labels from a teacher ensemble: pure numpy functions.

M teachers predict the same N unlabeled slices. From their outputs:
  ensemble_mean_score   the pseudo-label score (hard target), (N,)
  ensemble_spread       disagreement between teachers, (N,)
  total_std             spread plus the teachers' own predicted uncertainty, (N,)
  mean_distribution     the soft target: per head, the mean over teachers of
                        the predicted probabilities, (N, K, num_bins)
and the selection a student trains on (`select_for_student`): which slices,
with which targets and which loss weight, for the strategies
  'hard'        every slice, target = ensemble mean score (Gaussian targets
                of that score, as for a labeled slice);
  'soft'        every slice, target = the mean predicted distributions;
  'confidence'  only the slices the teachers agree on (lowest spread: a
                threshold or a top fraction), hard targets.
Scores are in label units (0..4 for LDCTIQAC2023).
"""
import math
from typing import Dict, Optional

import numpy as np

STRATEGIES = ('hard', 'soft', 'confidence')
CONFIDENCE_MEASURES = ('ensemble_std', 'total_std')


def _check_teacher_axis(values: np.ndarray, name: str, min_ndim: int) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  if values.ndim < min_ndim or values.shape[0] < 1:
    raise ValueError(f'{name} must have a leading teacher axis (M >= 1) and at least '
                     f'{min_ndim} dimensions, got shape {values.shape}.')
  return values


def ensemble_mean_score(teacher_scores: np.ndarray) -> np.ndarray:
  """Mean of the teachers' scores: (M, N) -> (N,) float64."""
  return _check_teacher_axis(teacher_scores, 'teacher_scores', 2).mean(axis=0)


def ensemble_spread(teacher_scores: np.ndarray) -> np.ndarray:
  """Standard deviation over teachers (ddof=0) of their scores: (M, N) -> (N,).

  Zero for a single teacher.
  """
  return _check_teacher_axis(teacher_scores, 'teacher_scores', 2).std(axis=0)


def total_std(teacher_scores: np.ndarray, teacher_uncertainty: np.ndarray) -> np.ndarray:
  """Std of the equal mixture of the teachers' predicted distributions: (M, N) x2 -> (N,).

  sqrt(mean_m(u_m^2) + var_m(s_m)) (law of total variance): each teacher's own
  predicted standard deviation u_m plus their disagreement. Unlike
  `ensemble_spread` it ranks slices also with a single teacher.
  """
  scores = _check_teacher_axis(teacher_scores, 'teacher_scores', 2)
  uncertainty = _check_teacher_axis(teacher_uncertainty, 'teacher_uncertainty', 2)
  if scores.shape != uncertainty.shape:
    raise ValueError(f'teacher_scores {scores.shape} and teacher_uncertainty '
                     f'{uncertainty.shape} must have the same shape (M, N).')
  return np.sqrt(np.mean(uncertainty ** 2, axis=0) + scores.var(axis=0))


def mean_distribution(teacher_log_probs: np.ndarray) -> np.ndarray:
  """Mean over teachers of predicted probabilities: (M, N, K, bins) log -> (N, K, bins).

  Averages probabilities (not log-probabilities), so the result is the
  ensemble's mixture distribution per head and sums to 1 over bins.
  """
  log_probs = _check_teacher_axis(teacher_log_probs, 'teacher_log_probs', 4)
  probs = np.exp(log_probs).mean(axis=0)
  return probs / probs.sum(axis=-1, keepdims=True)


def num_kept(num_examples: int, fraction: float) -> int:
  """How many of num_examples the top-fraction filter keeps: floor(fraction * N).

  The tiny epsilon makes products that are integers in exact arithmetic
  (0.3 * 10, 0.29 * 100) count as such despite binary rounding.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'config.semi.confidence_fraction must be in (0, 1], got {fraction}.')
  return min(num_examples, math.floor(fraction * num_examples + 1e-9))


def select_most_confident(spread: np.ndarray, *, fraction: Optional[float] = None,
                          threshold: Optional[float] = None) -> np.ndarray:
  """Indices of the slices the teachers agree on, in increasing index order.

  Exactly one of:
    fraction: keep exactly `num_kept(N, fraction)` = floor(fraction * N)
      slices, those with the lowest spread (ties: lower index first).
    threshold: keep every slice with spread <= threshold (score units).
  Args:
    spread: (N,) non-negative disagreement per slice (ensemble_spread or
      total_std).
  Returns:
    (n_kept,) int64 sorted indices into the N slices.
  """
  spread = np.asarray(spread, dtype=np.float64)
  if spread.ndim != 1:
    raise ValueError(f'spread must be (N,), got shape {spread.shape}.')
  if (fraction is None) == (threshold is None):
    raise ValueError('Give exactly one of config.semi.confidence_fraction and '
                     f'config.semi.confidence_threshold (got {fraction}, {threshold}).')
  if threshold is not None:
    if threshold < 0:
      raise ValueError(f'config.semi.confidence_threshold must be >= 0, got {threshold}.')
    return np.flatnonzero(spread <= threshold)
  order = np.argsort(spread, kind='stable')
  return np.sort(order[:num_kept(spread.size, fraction)])


def select_for_student(teacher_scores: np.ndarray, teacher_uncertainty: np.ndarray,
                       teacher_log_probs: Optional[np.ndarray], *, strategy: str,
                       weight: float, confidence_measure: str = 'ensemble_std',
                       fraction: Optional[float] = None,
                       threshold: Optional[float] = None) -> Dict[str, np.ndarray]:
  """The pseudo-labeled slices a student trains on, with targets and weights.

  Args:
    teacher_scores, teacher_uncertainty: (M, N) teacher predictions.
    teacher_log_probs: (M, N, K, bins), needed by 'soft' (distribution heads).
    strategy: one of STRATEGIES (module docstring).
    weight: loss weight of each pseudo-labeled slice (labeled slices weigh 1).
    confidence_measure: 'ensemble_std' (needs M >= 2) or 'total_std', for
      'confidence'.
    fraction, threshold: the 'confidence' filter (`select_most_confident`).
  Returns:
    'index' (n,) int64 positions in the unlabeled split, 'score' (n,)
    float32 ensemble mean, 'weight' (n,) float32, 'spread' (n,) float32 (the
    confidence measure, or the ensemble spread), and for 'soft'
    'target_probs' (n, K, bins) float32.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f'config.semi.strategy={strategy!r}; expected one of {STRATEGIES}.')
  if not weight > 0:
    raise ValueError(f'config.semi.pseudo_weight must be > 0, got {weight}.')
  scores = _check_teacher_axis(teacher_scores, 'teacher_scores', 2)
  mean_score = ensemble_mean_score(scores)
  if strategy == 'confidence':
    if confidence_measure == 'ensemble_std':
      if scores.shape[0] < 2:
        raise ValueError("config.semi.confidence_measure='ensemble_std' needs at least 2 "
                         "teachers; use 'total_std' with a single teacher.")
      spread = ensemble_spread(scores)
    elif confidence_measure == 'total_std':
      spread = total_std(scores, teacher_uncertainty)
    else:
      raise ValueError(f'config.semi.confidence_measure={confidence_measure!r}; expected '
                       f'one of {CONFIDENCE_MEASURES}.')
    index = select_most_confident(spread, fraction=fraction, threshold=threshold)
  else:
    spread = ensemble_spread(scores)
    index = np.arange(mean_score.size)
  selection = {
      'index': index.astype(np.int64),
      'score': mean_score[index].astype(np.float32),
      'weight': np.full(index.size, weight, np.float32),
      'spread': spread[index].astype(np.float32),
  }
  if strategy == 'soft':
    if teacher_log_probs is None:
      raise ValueError("config.semi.strategy='soft' needs teachers with a distribution "
                       "head (config.model.head.name='distribution').")
    selection['target_probs'] = mean_distribution(teacher_log_probs)[index].astype(
        np.float32)
  return selection
