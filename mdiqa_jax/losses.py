"""Losses: pure functions of (predictions, targets) with documented shapes.

A distribution head predicts K log-distributions over the score bins
(`models.bins`); head k is trained towards a discretised Gaussian centred on
the label with width sigma_k ("scale" k of label uncertainty).

Losses are chosen by name: `config.loss.name` picks a builder from `LOSSES`,
called as builder(bin_centers=(num_bins,) array, **config.loss.kwargs); it
returns loss_fn(outputs, batch) -> (per-example loss (B,), aux dict of (B,)
terms). `outputs` is the head's dict (`models.head.OUTPUTS`); `batch` has
'score' (B,) and optionally 'target_probs' (B, K, num_bins) soft targets
(pseudo-labels). A new loss is a function registered with
`@LOSSES.register('name')`; nothing else changes.
"""
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from mdiqa_jax.models import bins
from mdiqa_jax.registry import Registry

Array = jax.Array
LossFn = Callable[[Dict[str, Array], Dict[str, Array]], Tuple[Array, Dict[str, Array]]]
LOSSES = Registry('loss', 'config.loss.name')


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


def _gaussian_loss(kind: str, *, bin_centers: Array, sigmas: Sequence[float],
                   scale_weights: Sequence[float], point_weight: float = 0.0) -> LossFn:
  """CE / KL of the K heads to Gaussian targets (or to batch['target_probs']),
  plus point_weight * L1 of the expected score."""
  sigmas, scale_weights = tuple(sigmas), tuple(scale_weights)
  point_weight = float(point_weight)
  if len(scale_weights) != len(sigmas):
    raise ValueError(
        f'config.loss.kwargs.scale_weights has {len(scale_weights)} entries but '
        f'config.loss.kwargs.sigmas has {len(sigmas)}; they must match.')

  def loss_fn(outputs, batch):
    if 'target_probs' in batch:
      loss = soft_target_loss(outputs['log_probs'], batch['target_probs'], scale_weights,
                              kind)
    else:
      loss = multi_scale_gaussian_loss(outputs['log_probs'], batch['score'], sigmas,
                                       bin_centers, scale_weights, kind)
    aux = {'distribution_loss': loss}
    if point_weight:
      point = l1_loss(outputs['score'], batch['score'])
      loss = loss + point_weight * point
      aux['point_loss'] = point
    return loss, aux
  return loss_fn


@LOSSES.register('gaussian_ce')
def gaussian_ce(**kwargs) -> LossFn:
  """Cross-entropy to multi-scale Gaussian targets (the paper's loss)."""
  return _gaussian_loss('ce', **kwargs)


@LOSSES.register('gaussian_kl')
def gaussian_kl(**kwargs) -> LossFn:
  """KL divergence to the same targets: the same gradients, zero at the optimum."""
  return _gaussian_loss('kl', **kwargs)


def _point_loss(per_example: Callable[[Array, Array], Array]) -> LossFn:
  def loss_fn(outputs, batch):
    loss = per_example(outputs['score'], batch['score'])
    return loss, {'point_loss': loss}
  return loss_fn


@LOSSES.register('l1')
def l1(*, bin_centers: Array) -> LossFn:
  """|score - label| (point regression; no bins)."""
  del bin_centers
  return _point_loss(l1_loss)


@LOSSES.register('mse')
def mse(*, bin_centers: Array) -> LossFn:
  """(score - label)^2 (point regression; no bins)."""
  del bin_centers
  return _point_loss(mse_loss)


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  """The run's loss: LOSSES[config.loss.name] on config.loss.kwargs.

  Reads config.loss and the model's score bins (config.model.head); the
  returned loss_fn is described in the module docstring.
  """
  head = config.model.head
  centers = bins.bin_centers(head.score_min, head.score_max, head.bin_width)
  return LOSSES.get(config.loss.name)(bin_centers=centers, **config.loss.kwargs)
