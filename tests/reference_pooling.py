"""Slow, obvious references for whole-slice scoring, shared by the tests.

Written from the documented rules (data/preprocess.py, slice_scoring.py), not
from their code: a pixel is body when the mean of its 7 x 7 neighbourhood
(zero outside the image) exceeds 0.007 of the window; a slice's distribution
is the mixture of every patch's distributions, each weighted by its learned
weight times the fraction of body pixels under it.
"""
import numpy as np

BODY_THRESHOLD = 0.007


def body_mask(unit: np.ndarray) -> np.ndarray:
  """(H, W) bool, one pixel at a time."""
  padded = np.pad(unit.astype(np.float64), 3)
  return np.array([[padded[i:i + 7, j:j + 7].mean() > BODY_THRESHOLD
                    for j in range(unit.shape[1])] for i in range(unit.shape[0])])


def patch_body(body: np.ndarray, top: int, left: int, grid: int, patch: int) -> np.ndarray:
  """(grid, grid) body fraction of the patches of the tile at (top, left)."""
  return np.array([[body[top + patch * i:top + patch * (i + 1),
                         left + patch * j:left + patch * (j + 1)].mean()
                    for j in range(grid)] for i in range(grid)])


def pool(patch_weights, body_fractions, patch_log_probs, centers):
  """(score, probs (K, bins)) of the weighted mixture over every patch of every tile."""
  probs, total = 0.0, 0.0
  for weight, fraction, log_probs in zip(np.ravel(patch_weights), np.ravel(body_fractions),
                                         np.reshape(patch_log_probs,
                                                    (-1,) + np.shape(patch_log_probs)[-2:])):
    probs = probs + weight * fraction * np.exp(log_probs.astype(np.float64))
    total += weight * fraction
  probs = probs / total
  return float(probs.mean(axis=0) @ centers), probs
