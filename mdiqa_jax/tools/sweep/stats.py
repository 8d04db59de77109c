"""Statistics of finished runs: predictions, the uncertainty check, seed comparisons."""
import csv
from typing import Any, Dict, Optional, Sequence

import numpy as np
import scipy.stats



def read_predictions(path: str) -> Dict[str, np.ndarray]:
  """predictions.csv (evaluate.write_report) -> 'label', 'score', 'uncertainty' (N,)."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  return {key: np.asarray([float(row[key]) for row in rows])
          for key in ('label', 'score', 'uncertainty')}


def uncertainty_check(predictions: Dict[str, np.ndarray]) -> Optional[Dict[str, float]]:
  """Does the predicted std track the error? None when the std is constant (point head).

  Returns Spearman and Pearson correlations of |score - label| with the
  predicted std, and the fraction of labels within 1 and 2 predicted stds
  (0.683 / 0.954 for a calibrated Gaussian).
  """
  error = np.abs(predictions['score'] - predictions['label'])
  std = predictions['uncertainty']
  if np.ptp(std) == 0 or np.ptp(error) == 0:
    return None
  return {'spearman': float(scipy.stats.spearmanr(error, std)[0]),
          'pearson': float(scipy.stats.pearsonr(error, std)[0]),
          'within_1_std': float(np.mean(error <= std)),
          'within_2_std': float(np.mean(error <= 2 * std)),
          'mean_std': float(np.mean(std)), 'rmse': float(np.sqrt(np.mean(error ** 2)))}


def calibration_bins(predictions: Dict[str, np.ndarray], num_bins: int = 5):
  """Equal-count bins of predicted std: (mean predicted std, RMSE, count) per bin."""
  order = np.argsort(predictions['uncertainty'], kind='stable')
  error = predictions['score'] - predictions['label']
  bins = []
  for chunk in np.array_split(order, num_bins):
    if chunk.size:
      bins.append((float(np.mean(predictions['uncertainty'][chunk])),
                   float(np.sqrt(np.mean(error[chunk] ** 2))), int(chunk.size)))
  return bins


def summarize(values: Sequence[float]) -> tuple:
  """(mean, sample std (ddof=1; 0 for one value), n)."""
  values = np.asarray(values, np.float64)
  return (float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0,
          int(values.size))


def compare(better: Sequence[float], worse: Sequence[float]) -> Dict[str, Any]:
  """Difference of means with its standard error and a verdict.

  'holds' when mean(better) - mean(worse) > 2 standard errors
  (sqrt(s_a^2/n_a + s_b^2/n_b)), 'reversed' when < -2 SE, otherwise 'within
  noise' (with the sign of the difference); no verdict with a single seed.
  """
  mean_a, std_a, n_a = summarize(better)
  mean_b, std_b, n_b = summarize(worse)
  difference = mean_a - mean_b
  standard_error = float(np.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b))
  if min(n_a, n_b) < 2:
    verdict = 'no verdict (one seed)'
  elif difference > 2 * standard_error:
    verdict = 'holds'
  elif difference < -2 * standard_error:
    verdict = 'reversed'
  else:
    verdict = 'within noise (' + ('same direction' if difference > 0 else 'opposite') + ')'
  return {'difference': difference, 'standard_error': standard_error, 'verdict': verdict}
