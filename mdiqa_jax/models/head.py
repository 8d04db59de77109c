"""Patch-weighted score heads (MANIQA / AHIQ style aggregation).

Every patch of the fused feature grid predicts a score (or K distributions over
score bins) and a positive weight; the image prediction is the weighted mean
sum_i(w_i * s_i) / sum_i(w_i). For distributions the weighted mean is taken of
the probabilities, so the expected score is exactly the weighted mean of the
patch expected scores.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdiqa_jax import losses

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
      (`slice_scoring.combine_tiles`).
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
    centers = losses.bin_centers(self.score_min, self.score_max, self.bin_width)
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
    patch_scores = losses.expected_score(patch_log_probs, centers).mean(-1)
    return {
        'log_probs': log_probs,
        'scale_scores': losses.expected_score(log_probs, centers),
        'score': losses.expected_score(mixture, centers),
        'uncertainty': losses.distribution_std(mixture, centers),
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
  score_min: float = 0.0
  score_max: float = 4.0
  dtype: Any = jnp.float32

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

