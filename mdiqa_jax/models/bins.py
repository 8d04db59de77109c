"""Score bins: the discrete score axis that heads, losses and inference share.

Scores live on [score_min, score_max] (0..4 for LDCTIQAC2023), discretised into
bins of width `bin_width` centred at `bin_centers`.
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def bin_centers(score_min: float, score_max: float, bin_width: float) -> Array:
  """Bin centres score_min, score_min + w, ..., score_max: (num_bins,) float32."""
  num_bins = int(round((score_max - score_min) / bin_width)) + 1
  if num_bins < 2 or abs(score_min + (num_bins - 1) * bin_width - score_max) > 1e-6:
    raise ValueError(
        f'bin_width={bin_width} must divide the score range [{score_min}, {score_max}] '
        'into at least one step.')
  return score_min + bin_width * jnp.arange(num_bins, dtype=jnp.float32)


def expected_score(log_probs: Array, centers: Array) -> Array:
  """Expectation of a distribution over bins: (..., num_bins) -> (...)."""
  return jnp.sum(jnp.exp(log_probs) * centers, axis=-1)


def distribution_std(log_probs: Array, centers: Array) -> Array:
  """Standard deviation of a distribution over bins: (..., num_bins) -> (...)."""
  probs = jnp.exp(log_probs)
  mean = jnp.sum(probs * centers, axis=-1, keepdims=True)
  variance = jnp.sum(probs * (centers - mean) ** 2, axis=-1)
  return jnp.sqrt(jnp.maximum(variance, 0.0))
