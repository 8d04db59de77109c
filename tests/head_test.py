"""Heads against a numpy forward pass written out from the parameters."""
import jax
import jax.numpy as jnp
import numpy as np

from mdiqa_jax.models.head import DistributionHead, PointHead

CENTERS = np.arange(21) * 0.2


def _gelu(x):  # flax.linen.gelu default: tanh approximation.
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _dense(params, x):
  return x @ np.asarray(params['kernel'], np.float64) + np.asarray(params['bias'], np.float64)


def _weights(params, features):
  hidden = _gelu(_dense(params['hidden'], features))
  return np.log1p(np.exp(_dense(params['out'], hidden)[..., 0])) + 1e-6


def _features(seed=0, shape=(2, 3, 4, 8)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_distribution_head_equals_numpy_weighted_mixture():
  features = _features()
  head = DistributionHead(num_distributions=2, hidden=16)
  params = head.init(jax.random.PRNGKey(0), jnp.asarray(features))['params']
  out = jax.jit(head.apply)({'params': params}, jnp.asarray(features))

  x = features.astype(np.float64)
  logits = _dense(params['logits'], _gelu(_dense(params['hidden'], x)))
  logits = logits.reshape(2, 12, 2, 21)
  patch_probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = _weights(params['weights'], x).reshape(2, 12)
  aggregated = np.einsum('bp,bpkn->bkn', weights, patch_probs) / weights.sum(1)[:, None, None]
  mixture = aggregated.mean(1)
  score = mixture @ CENTERS
  std = np.sqrt((mixture * (CENTERS - score[:, None]) ** 2).sum(-1))
  patch_scores = (patch_probs @ CENTERS).mean(-1)

  np.testing.assert_allclose(np.exp(out['log_probs']), aggregated, atol=1e-5)
  np.testing.assert_allclose(out['scale_scores'], aggregated @ CENTERS, atol=1e-4)
  np.testing.assert_allclose(out['score'], score, atol=1e-4)
  np.testing.assert_allclose(out['uncertainty'], std, atol=1e-4)
  np.testing.assert_allclose(out['patch_scores'], patch_scores.reshape(2, 3, 4), atol=1e-4)
  np.testing.assert_allclose(out['patch_weights'], weights.reshape(2, 3, 4), rtol=1e-4)
  # The expectation of the weighted mixture is the MANIQA weighted patch mean.
  np.testing.assert_allclose(
      score, (weights * patch_scores).sum(1) / weights.sum(1), atol=1e-9)


def test_point_head_equals_numpy_weighted_mean():
  features = _features(1)
  head = PointHead(hidden=16)
  params = head.init(jax.random.PRNGKey(1), jnp.asarray(features))['params']
  out = head.apply({'params': params}, jnp.asarray(features))
  x = features.astype(np.float64)
  patch_scores = _dense(params['score'], _gelu(_dense(params['hidden'], x)))[..., 0]
  weights = _weights(params['weights'], x)
  score = (weights * patch_scores).sum((1, 2)) / weights.sum((1, 2))
  np.testing.assert_allclose(out['score'], score, atol=1e-5)
  np.testing.assert_allclose(out['patch_scores'], patch_scores, atol=1e-5)
  np.testing.assert_array_equal(out['uncertainty'], np.zeros(2))
  assert out['scale_scores'].shape == (2, 1)
  assert 'log_probs' not in out


def test_point_head_starts_at_the_middle_of_the_range():
  head = PointHead(hidden=8, score_min=0.0, score_max=4.0)
  features = jnp.zeros((1, 2, 2, 4))
  params = head.init(jax.random.PRNGKey(0), features)['params']
  np.testing.assert_allclose(head.apply({'params': params}, features)['score'], [2.0])
