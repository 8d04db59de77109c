"""Pooling the tiles of one slice: the paper's patch-weighted score at slice level.

Every patch i of every tile of a slice is weighted by w_i * body_i (its learned
patch weight times the fraction of body pixels under it; air and the couch
count for nothing):
  p_k(bin) = sum_i w_i body_i p_ik(bin) / sum_i w_i body_i   (head k)
score = expectation of the mixture of the K heads, uncertainty = its standard
deviation. For a single full-body tile this is exactly the model's own output.
"""
import math
from typing import Any, Dict, Tuple

import numpy as np

from mdiqa_jax.data import preprocess

# Per-tile model outputs the pooling reads ('patch_log_probs': distribution heads).
TILE_KEYS = ('patch_scores', 'patch_weights', 'patch_log_probs')


def combine_tiles(outputs: Dict[str, np.ndarray], patch_body: np.ndarray,
                  bin_centers: np.ndarray) -> Dict[str, Any]:
  """Pools the patch predictions of all tiles of one slice (module docstring).

  Args:
    outputs: 'patch_weights', 'patch_scores' (T, h, w) and, for distribution
      heads, 'patch_log_probs' (T, h, w, K, bins).
    patch_body: (T, h, w) body fraction of every patch, in [0, 1].
    bin_centers: (bins,) score of each bin.

  Returns:
    'score', 'uncertainty' (floats), 'scale_scores' (K,) float32 and, for
    distribution heads, 'log_probs' (K, bins) float32. A point head has
    K = 1 and uncertainty 0, as on a single tile.
  """
  weights = np.asarray(outputs['patch_weights'], np.float64) * patch_body
  weights = weights / weights.sum()
  if 'patch_log_probs' not in outputs:
    score = float(np.sum(weights * outputs['patch_scores']))
    return {'score': score, 'uncertainty': 0.0,
            'scale_scores': np.array([score], np.float32)}
  probs = np.einsum('thw,thwkb->kb', weights,
                    np.exp(np.asarray(outputs['patch_log_probs'], np.float64)))
  mixture = probs.mean(axis=0)
  score = float(mixture @ bin_centers)
  variance = float(mixture @ np.square(bin_centers)) - score**2
  return {'score': score, 'uncertainty': math.sqrt(max(variance, 0.0)),
          'scale_scores': (probs @ bin_centers).astype(np.float32),
          'log_probs': np.log(np.maximum(probs, 1e-30)).astype(np.float32)}


def patch_maps(outputs: Dict[str, np.ndarray], tiles: preprocess.Tiles,
               shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """Whole-slice maps of what each patch contributed, for heatmaps.

  Returns:
    'score_map' (H, W) float32: weighted mean of the scores of the patches
    covering each pixel (NaN where no scored patch lies); 'weight_map'
    (H, W) float32: each pixel's share of the slice score's total weight,
    per pixel (sums to about 1 over the slice).
  """
  patch = tiles.images.shape[1] // outputs['patch_scores'].shape[1]
  height, width = max(shape[0], tiles.images.shape[1]), max(shape[1], tiles.images.shape[2])
  weighted, total = np.zeros((height, width)), np.zeros((height, width))
  weights = np.asarray(outputs['patch_weights'], np.float64) * tiles.patch_body
  pixels = np.ones((patch, patch))  # Spreads one patch value over its pixels.
  for (top, left), weight, score in zip(tiles.origins, weights, outputs['patch_scores']):
    rows, cols = slice(top, top + weight.shape[0] * patch), slice(left, left + weight.shape[1] * patch)
    weighted[rows, cols] += np.kron(weight * score, pixels)
    total[rows, cols] += np.kron(weight, pixels)
  with np.errstate(invalid='ignore', divide='ignore'):
    score_map = np.where(total > 0, weighted / total, np.nan)
  weight_map = total / max(total.sum(), 1e-30)
  return {'score_map': score_map[:shape[0], :shape[1]].astype(np.float32),
          'weight_map': weight_map[:shape[0], :shape[1]].astype(np.float32)}
