"""Losses against slow numpy/scipy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdiqa_jax import losses
from mdiqa_jax.models import bins
from mdiqa_jax.config_base import base_config

CENTERS = np.arange(21) * 0.2  # [0, 4] in 0.2 steps.


def _reference_targets(score, sigma):
  """Bin masses by scipy's normal cdf, one bin at a time, tails folded in."""
  masses = []
  for i, c in enumerate(CENTERS):
    low = -np.inf if i == 0 else c - 0.1
    high = np.inf if i == len(CENTERS) - 1 else c + 0.1
    masses.append(stats.norm.cdf(high, score, sigma) - stats.norm.cdf(low, score, sigma))
  return np.array(masses) / np.sum(masses)


def test_bin_centers_cover_range():
  np.testing.assert_allclose(bins.bin_centers(0.0, 4.0, 0.2), CENTERS, atol=1e-6)
  with pytest.raises(ValueError, match='bin_width'):
    bins.bin_centers(0.0, 4.0, 0.3)


@pytest.mark.parametrize('sigma', [0.1, 0.25, 0.5, 1.0])
def test_gaussian_targets_match_scipy_and_sum_to_one(sigma):
  scores = np.array([0.0, 0.4, 1.3, 2.0, 3.77, 4.0])
  got = np.asarray(losses.gaussian_targets(jnp.asarray(scores), sigma, jnp.asarray(CENTERS)))
  want = np.stack([_reference_targets(s, sigma) for s in scores])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize('sigma', [0.1, 0.25, 0.5])
def test_gaussian_target_mean_equals_score_away_from_edges(sigma):
  # "Away from the edges": at least 4 sigma inside [0, 4], where the folded tails
  # move the mean by < 1e-4.
  def away_from_edges(scores):
    return scores[(scores >= 4 * sigma) & (scores <= 4 - 4 * sigma)]
  # On the label grid (0.2 steps) the discretisation is symmetric.
  on_grid = away_from_edges(np.arange(21) * 0.2)
  targets = losses.gaussian_targets(jnp.asarray(on_grid), sigma, jnp.asarray(CENTERS))
  np.testing.assert_allclose(np.asarray(targets) @ CENTERS, on_grid, atol=1e-4)
  # Off the grid (pseudo labels) the bias stays below 2 % of a bin.
  off_grid = away_from_edges(np.array([0.53, 1.73, 2.05, 2.31, 3.41]))
  targets = losses.gaussian_targets(jnp.asarray(off_grid), sigma, jnp.asarray(CENTERS))
  tolerance = 1e-4 if sigma >= 0.2 else 4e-3
  np.testing.assert_allclose(np.asarray(targets) @ CENTERS, off_grid, atol=tolerance)


def test_expected_score_and_std_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 21))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = (probs * CENTERS).sum(-1)
  std = np.sqrt((probs * (CENTERS - mean[..., None]) ** 2).sum(-1))
  log_probs = jnp.asarray(np.log(probs), jnp.float32)
  np.testing.assert_allclose(bins.expected_score(log_probs, CENTERS), mean, atol=1e-5)
  np.testing.assert_allclose(bins.distribution_std(log_probs, CENTERS), std, atol=1e-5)


@pytest.mark.parametrize('kind', ['ce', 'kl'])
def test_multi_scale_loss_is_minimal_at_target(kind):
  sigmas, weights = (0.1, 0.25, 0.5), (1.0, 0.5, 2.0)
  score = jnp.array([1.2, 3.4])
  targets = np.stack([np.stack([_reference_targets(s, sg) for sg in sigmas]) for s in score])
  at_target = losses.multi_scale_gaussian_loss(
      jnp.log(jnp.asarray(targets) + 1e-30), score, sigmas, CENTERS, weights, kind)
  rng = np.random.default_rng(0)
  for _ in range(5):
    perturbed = np.log(targets + 1e-30) + 0.3 * rng.normal(size=targets.shape)
    perturbed -= np.log(np.exp(perturbed).sum(-1, keepdims=True))
    other = losses.multi_scale_gaussian_loss(
        jnp.asarray(perturbed), score, sigmas, CENTERS, weights, kind)
    assert np.all(np.asarray(other) > np.asarray(at_target))
  if kind == 'kl':
    np.testing.assert_allclose(at_target, 0.0, atol=1e-4)


def test_multi_scale_loss_equals_weighted_numpy_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 2, 21))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  score, sigmas, weights = np.array([0.6, 2.2]), (0.2, 0.7), (0.3, 1.5)
  want = np.zeros(2)
  for b in range(2):
    for k in range(2):
      target = _reference_targets(score[b], sigmas[k])
      want[b] += weights[k] * -np.sum(target * log_probs[b, k])
  got = losses.multi_scale_gaussian_loss(jnp.asarray(log_probs, jnp.float32),
                                         jnp.asarray(score), sigmas, CENTERS, weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_entropy_gradient_vanishes_at_target_logits():
  target = _reference_targets(2.0, 0.5)
  loss = lambda logits: losses.cross_entropy(jax.nn.log_softmax(logits), target)
  np.testing.assert_allclose(jax.grad(loss)(jnp.log(jnp.asarray(target))), 0.0, atol=1e-6)


def test_point_losses():
  pred, target = jnp.array([1.0, 2.5]), jnp.array([1.5, 2.0])
  np.testing.assert_allclose(losses.l1_loss(pred, target), [0.5, 0.5])
  np.testing.assert_allclose(losses.mse_loss(pred, target), [0.25, 0.25])


def _outputs(batch_size=2, num_scales=3):
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(batch_size, num_scales, 21)), jnp.float32)
  log_probs = jax.nn.log_softmax(logits)
  return {'log_probs': log_probs,
          'score': bins.expected_score(log_probs, CENTERS).mean(-1)}


def test_make_loss_fn_from_config_matches_the_pure_functions():
  config = base_config()
  outputs, batch = _outputs(), {'score': jnp.array([1.0, 3.0])}
  loss, _ = losses.make_loss_fn(config)(outputs, batch)
  want = losses.multi_scale_gaussian_loss(outputs['log_probs'], batch['score'],
                                          config.loss.kwargs.sigmas, CENTERS,
                                          config.loss.kwargs.scale_weights)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  config.loss.name = 'l1'
  config.loss.kwargs = {}
  loss, _ = losses.make_loss_fn(config)(outputs, batch)
  np.testing.assert_allclose(loss, np.abs(np.asarray(outputs['score']) - [1.0, 3.0]), rtol=1e-6)


def test_make_loss_fn_uses_soft_targets_when_given():
  config = base_config()
  outputs = _outputs()
  soft = jax.nn.softmax(jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 21))))
  loss, _ = losses.make_loss_fn(config)(outputs, {'score': jnp.zeros(2), 'target_probs': soft})
  want = -(np.asarray(soft) * np.asarray(outputs['log_probs'])).sum(-1).sum(-1)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_make_loss_fn_names_the_field_of_an_unknown_loss():
  config = base_config()
  config.loss.name = 'hinge'
  with pytest.raises(ValueError, match=r"config.loss.name='hinge': no such loss"):
    losses.make_loss_fn(config)


def test_make_loss_fn_rejects_mismatched_scale_weights():
  config = base_config()
  config.loss.kwargs.scale_weights = (1.0,)
  with pytest.raises(ValueError, match='must match'):
    losses.make_loss_fn(config)
