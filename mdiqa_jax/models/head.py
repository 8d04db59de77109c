"""Patch-weighted score heads (MANIQA / AHIQ style aggregation).

Every patch of the fused feature grid predicts a score (or K distributions over
score bins) and a positive weight; the image prediction is the weighted mean
sum_i(w_i * s_i) / sum_i(w_i). For distributions the weighted mean is taken of
the probabilities, so the expected score is exactly the weighted mean of the
patch expected scores.

Heads are chosen by name (`config.model.head.name`, registry `HEADS`); each
returns the dict described once in `OUTPUTS` and checked by `check_outputs`.
A new head is a function registered with `@HEADS.register('name')` that takes
(hidden, score_min, score_max, bin_width, dtype, **config.model.head.kwargs)
and returns a flax module mapping fused features (B, h, w, C) to that dict.
"""
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdiqa_jax.models import bins
from mdiqa_jax.registry import Registry

HEADS = Registry('head', 'config.model.head.name')

# The output contract of every head: name -> (shape, meaning). B tiles, an
# h x w patch grid, K distributions (1 for a point head), `bins` score bins.
OUTPUTS: Dict[str, Tuple[str, str]] = {
    'score': ('(B,)', 'expected score, score units (0 bad .. 4 excellent)'),
    'uncertainty': ('(B,)', 'standard deviation of the predicted score distribution, '
                    'score units (0 for a point head)'),
    'scale_scores': ('(B, K)', 'expected score of each of the K distribution heads'),
    'patch_scores': ('(B, h, w)', 'expected score of each patch of the grid'),
    'patch_weights': ('(B, h, w)', 'positive weight of each patch; score = '
                      'sum(w * s) / sum(w) over the patches'),
    'log_probs': ('(B, K, bins)', 'log-probabilities of the score bins per head '
                  '(distribution heads only)'),
    'patch_log_probs': ('(B, h, w, K, bins)', 'log-probabilities of the score bins per '
                        'patch and head (distribution heads only): pooled over the tiles '
                        'of a slice by inference.tiles.combine_tiles'),
}
REQUIRED_OUTPUTS = ('score', 'uncertainty', 'scale_scores', 'patch_scores', 'patch_weights')


def check_outputs(outputs: Dict[str, Any], batch: int, grid_hw: Tuple[int, int],
                  num_bins: int) -> None:
  """Raises ValueError unless `outputs` (arrays or ShapeDtypeStructs) keep `OUTPUTS`.

  Required keys must be present; every key must be one of OUTPUTS with the
  shape it documents (K read from 'scale_scores'); the distribution keys
  come together.
  """
  missing = [key for key in REQUIRED_OUTPUTS if key not in outputs]
  unknown = sorted(set(outputs) - set(OUTPUTS))
  if missing or unknown:
    raise ValueError(f'head outputs: missing {missing}, unknown {unknown}; a head '
                     f'returns {list(OUTPUTS)} (models/head.py OUTPUTS).')
  if ('log_probs' in outputs) != ('patch_log_probs' in outputs):
    raise ValueError("head outputs: 'log_probs' and 'patch_log_probs' come together.")
  num_scales = outputs['scale_scores'].shape[-1]
  height, width = grid_hw
  expected = {'score': (batch,), 'uncertainty': (batch,),
              'scale_scores': (batch, num_scales), 'patch_scores': (batch, height, width),
              'patch_weights': (batch, height, width),
              'log_probs': (batch, num_scales, num_bins),
              'patch_log_probs': (batch, height, width, num_scales, num_bins)}
  wrong = [f'{key} {tuple(value.shape)} (expected {expected[key]})'
           for key, value in outputs.items() if tuple(value.shape) != expected[key]]
  if wrong:
    raise ValueError(f'head outputs of the wrong shape: {", ".join(wrong)}.')


# Keeps patch weights strictly positive so sum(w) never vanishes.
_MIN_WEIGHT = 1e-6


class PatchWeights(nn.Module):
  """Positive per-patch weights: (B, h, w, C) -> (B, h, w) float32."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(features))
    x = nn.Dense(1, dtype=self.dtype, name='out')(x)[..., 0]
    return nn.softplus(x.astype(jnp.float32)) + _MIN_WEIGHT


class DistributionHead(nn.Module):
  """K patch-weighted distributions over score bins.

  Returns a dict:
    'log_probs' (B, K, num_bins): log of the weighted mean of patch distributions;
    'scale_scores' (B, K): expectation per head;
    'score' (B,): expectation of the mixture of the K heads (their mean);
    'uncertainty' (B,): standard deviation of that mixture, score units;
    'patch_scores' (B, h, w): expected score per patch (mean over heads);
    'patch_weights' (B, h, w);
    'patch_log_probs' (B, h, w, K, num_bins): each patch's distributions, from
      which a prediction pooled over many tiles is made exactly as here
      (`inference.tiles.combine_tiles`).
  """
  num_distributions: int
  hidden: int
  score_min: float = 0.0
  score_max: float = 4.0
  bin_width: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train=False):
    del train
    centers = bins.bin_centers(self.score_min, self.score_max, self.bin_width)
    num_bins = centers.shape[0]
    batch, height, width, _ = features.shape
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(features))
    logits = nn.Dense(self.num_distributions * num_bins, dtype=self.dtype, name='logits')(x)
    logits = logits.astype(jnp.float32).reshape(
        batch, height * width, self.num_distributions, num_bins)
    patch_log_probs = jax.nn.log_softmax(logits, axis=-1)            # (B, P, K, bins)
    weights = PatchWeights(self.hidden, self.dtype, name='weights')(features)  # (B, h, w)
    log_weights = jnp.log(weights.reshape(batch, height * width))
    log_weights -= jax.scipy.special.logsumexp(log_weights, axis=1, keepdims=True)
    log_probs = jax.scipy.special.logsumexp(
        patch_log_probs + log_weights[:, :, None, None], axis=1)       # (B, K, bins)
    mixture = jnp.log(jnp.mean(jnp.exp(log_probs), axis=1))           # (B, bins)
    patch_scores = bins.expected_score(patch_log_probs, centers).mean(-1)
    return {
        'log_probs': log_probs,
        'scale_scores': bins.expected_score(log_probs, centers),
        'score': bins.expected_score(mixture, centers),
        'uncertainty': bins.distribution_std(mixture, centers),
        'patch_scores': patch_scores.reshape(batch, height, width),
        'patch_weights': weights,
        'patch_log_probs': patch_log_probs.reshape(
            batch, height, width, self.num_distributions, num_bins),
    }


class PointHead(nn.Module):
  """Patch-weighted point regression (the ablation without distributions).

  Same output keys as DistributionHead except 'log_probs'; 'scale_scores' is
  (B, 1) and 'uncertainty' is zero (a point estimate carries none).
  """
  hidden: int
  dtype: Any = jnp.float32
  score_min: float = 0.0
  score_max: float = 4.0

  @nn.compact
  def __call__(self, features, *, train=False):
    del train
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(features))
    midpoint = 0.5 * (self.score_min + self.score_max)
    patch_scores = nn.Dense(1, dtype=self.dtype, name='score',
                            bias_init=nn.initializers.constant(midpoint))(x)
    patch_scores = patch_scores[..., 0].astype(jnp.float32)           # (B, h, w)
    weights = PatchWeights(self.hidden, self.dtype, name='weights')(features)
    score = jnp.sum(weights * patch_scores, axis=(1, 2)) / jnp.sum(weights, axis=(1, 2))
    return {
        'scale_scores': score[:, None],
        'score': score,
        'uncertainty': jnp.zeros_like(score),
        'patch_scores': patch_scores,
        'patch_weights': weights,
    }



@HEADS.register('distribution')
def distribution_head(*, hidden: int, score_min: float, score_max: float, bin_width: float,
                      dtype: Any, num_distributions: int = 3) -> DistributionHead:
  """K = num_distributions patch-weighted distributions (the MD-IQA head)."""
  return DistributionHead(num_distributions=num_distributions, hidden=hidden,
                          score_min=score_min, score_max=score_max, bin_width=bin_width,
                          dtype=dtype)


@HEADS.register('point')
def point_head(*, hidden: int, score_min: float, score_max: float, bin_width: float,
               dtype: Any) -> PointHead:
  """Patch-weighted point regression (no bins: bin_width is unused)."""
  del bin_width
  return PointHead(hidden=hidden, score_min=score_min, score_max=score_max, dtype=dtype)
