"""Losses: pure functions of (predictions, targets) with documented shapes.

Scores live on [score_min, score_max] (0..4 for LDCTIQAC2023), discretised into
`num_bins` bins of width `bin_width` centred at `bin_centers`. A distribution
head predicts K log-distributions over these bins; head k is trained towards a
discretised Gaussian centred on the label with width sigma_k ("scale" k of label
uncertainty). Swap losses from the config (`config.loss.type`), never in code.
"""
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
LossFn = Callable[[Dict[str, Array], Dict[str, Array]], Tuple[Array, Dict[str, Array]]]


def bin_centers(score_min: float, score_max: float, bin_width: float) -> Array:
  """Bin centres score_min, score_min + w, ..., score_max: (num_bins,) float32."""
  num_bins = int(round((score_max - score_min) / bin_width)) + 1
  if num_bins < 2 or abs(score_min + (num_bins - 1) * bin_width - score_max) > 1e-6:
    raise ValueError(
        f'bin_width={bin_width} must divide the score range [{score_min}, {score_max}] '
        'into at least one step.')
  return score_min + bin_width * jnp.arange(num_bins, dtype=jnp.float32)


def gaussian_targets(score: Array, sigma: float, centers: Array) -> Array:
  """Discretised Gaussian N(score, sigma^2) over the bins.

  Each bin gets the Gaussian mass between its edges (centre -/+ half a bin); the
  open outer edges take the tails, and the result is normalised.
  Args:
    score: (B,) label, score units.
    sigma: width, score units, > 0.
    centers: (num_bins,) equally spaced bin centres.
  Returns:
    (B, num_bins) float32 probabilities summing to 1.
  """
  half_width = 0.5 * (centers[1] - centers[0])
  edges = jnp.concatenate([centers - half_width, centers[-1:] + half_width])
  cdf = jax.scipy.stats.norm.cdf((edges[None, :] - score[:, None]) / sigma)
  cdf = cdf.at[:, 0].set(0.0).at[:, -1].set(1.0)  # Tails fold into the end bins.
  mass = cdf[:, 1:] - cdf[:, :-1]
  return mass / jnp.sum(mass, axis=-1, keepdims=True)


def expected_score(log_probs: Array, centers: Array) -> Array:
  """Expectation of a distribution over bins: (..., num_bins) -> (...)."""
  return jnp.sum(jnp.exp(log_probs) * centers, axis=-1)


def distribution_std(log_probs: Array, centers: Array) -> Array:
  """Standard deviation of a distribution over bins: (..., num_bins) -> (...)."""
  probs = jnp.exp(log_probs)
  mean = jnp.sum(probs * centers, axis=-1, keepdims=True)
  variance = jnp.sum(probs * (centers - mean) ** 2, axis=-1)
  return jnp.sqrt(jnp.maximum(variance, 0.0))


def cross_entropy(log_probs: Array, target_probs: Array) -> Array:
  """-sum p log q over the last axis: (..., num_bins) x2 -> (...)."""
  return -jnp.sum(target_probs * log_probs, axis=-1)


def kl_divergence(log_probs: Array, target_probs: Array) -> Array:
  """KL(target || predicted) over the last axis: (..., num_bins) x2 -> (...)."""
  target_log = jnp.log(jnp.where(target_probs > 0, target_probs, 1.0))
  return jnp.sum(target_probs * (target_log - log_probs), axis=-1)


def multi_scale_gaussian_loss(log_probs: Array, score: Array, sigmas: Sequence[float],
                              centers: Array, scale_weights: Sequence[float],
                              kind: str = 'ce') -> Array:
  """Weighted sum over K heads of CE or KL to Gaussian targets of width sigma_k.

  Args:
    log_probs: (B, K, num_bins) predicted log-distributions, one per head.
    score: (B,) labels.
    sigmas: K target widths, score units.
    centers: (num_bins,) bin centres.
    scale_weights: K non-negative weights.
    kind: 'ce' (cross-entropy) or 'kl' (same gradients, zero at the optimum).
  Returns:
    (B,) per-example loss.
  """
  targets = jnp.stack([gaussian_targets(score, s, centers) for s in sigmas], axis=1)
  return soft_target_loss(log_probs, targets, scale_weights, kind)


def soft_target_loss(log_probs: Array, target_probs: Array, scale_weights: Sequence[float],
                     kind: str = 'ce') -> Array:
  """Weighted sum over K heads of CE or KL to given targets.

  log_probs, target_probs: (B, K, num_bins); returns (B,).
  """
  divergence = {'ce': cross_entropy, 'kl': kl_divergence}[kind]
  per_scale = divergence(log_probs, target_probs)  # (B, K)
  return per_scale @ jnp.asarray(scale_weights, dtype=per_scale.dtype)


def l1_loss(pred: Array, target: Array) -> Array:
  """|pred - target|, elementwise: (B,) -> (B,)."""
  return jnp.abs(pred - target)


def mse_loss(pred: Array, target: Array) -> Array:
  """(pred - target)^2, elementwise: (B,) -> (B,)."""
  return jnp.square(pred - target)


POINT_LOSSES = {'l1': l1_loss, 'mse': mse_loss}
DISTRIBUTION_LOSSES = {'gaussian_ce': 'ce', 'gaussian_kl': 'kl'}


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  """Builds loss_fn(outputs, batch) -> (per_example_loss (B,), aux) from a config.

  Reads config.loss (type, sigmas, scale_weights, point_weight) and config.model
  (head_type, head bins). `outputs` is the model's dict; `batch` has 'score'
  (B,) and optionally 'target_probs' (B, K, num_bins) soft targets (pseudo
  labels), which replace the Gaussian targets where present.
  """
  loss_type = config.loss.type
  head_type = config.model.head_type
  sigmas = tuple(config.loss.sigmas)
  scale_weights = tuple(config.loss.scale_weights)
  point_weight = float(config.loss.point_weight)
  if len(scale_weights) != len(sigmas):
    raise ValueError(
        f'config.loss.scale_weights has {len(scale_weights)} entries but '
        f'config.loss.sigmas has {len(sigmas)}; they must match.')
  if loss_type in DISTRIBUTION_LOSSES:
    if head_type != 'distribution':
      raise ValueError(f"config.loss.type={loss_type!r} needs config.model.head_type="
                       f"'distribution', got {head_type!r}.")
    head = config.model.head
    centers = bin_centers(head.score_min, head.score_max, head.bin_width)
    kind = DISTRIBUTION_LOSSES[loss_type]

    def loss_fn(outputs, batch):
      if 'target_probs' in batch:
        loss = soft_target_loss(outputs['log_probs'], batch['target_probs'], scale_weights,
                                kind)
      else:
        loss = multi_scale_gaussian_loss(outputs['log_probs'], batch['score'], sigmas,
                                         centers, scale_weights, kind)
      aux = {'distribution_loss': loss}
      if point_weight:
        point = l1_loss(outputs['score'], batch['score'])
        loss = loss + point_weight * point
        aux['point_loss'] = point
      return loss, aux
    return loss_fn

  if loss_type in POINT_LOSSES:
    point_loss = POINT_LOSSES[loss_type]

    def loss_fn(outputs, batch):
      loss = point_loss(outputs['score'], batch['score'])
      return loss, {'point_loss': loss}
    return loss_fn

  raise ValueError(f'Unknown config.loss.type={loss_type!r}; expected one of '
                   f'{sorted(DISTRIBUTION_LOSSES) + sorted(POINT_LOSSES)}.')
