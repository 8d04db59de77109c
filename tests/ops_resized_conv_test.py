"""resized_conv2d against jax.image.resize then lax.conv_general_dilated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mdiqa_jax.models.align import ConditionConv
from mdiqa_jax.ops.resized_conv import resized_conv2d, shifted_resize_weights

# (input (B, h, w, C), out (H, W), kernel side, Cout): the alignment's 4x and
# 2x upsampling, the identity (the third scale), a non-integer factor, a
# rectangular grid and a 5x5 kernel, and downsampling (a fourth scale, where
# jax.image.resize antialiases).
CASES = [
    ((2, 3, 3, 5), (12, 12), 3, 4),
    ((2, 3, 3, 5), (6, 6), 3, 4),
    ((1, 4, 4, 3), (4, 4), 3, 2),
    ((1, 3, 4, 2), (7, 9), 3, 3),
    ((1, 2, 3, 2), (6, 5), 5, 2),
    ((1, 6, 6, 3), (3, 3), 3, 2),
]


def _resize_then_conv(x, kernel, out_hw):
  resized = jax.image.resize(x, (x.shape[0], *out_hw, x.shape[-1]), 'bilinear')
  return jax.lax.conv_general_dilated(resized, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=jax.lax.Precision.HIGHEST)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize('shape, out_hw, side, out_channels', CASES)
def test_equals_resize_then_convolution(shape, out_hw, side, out_channels):
  x = _random(shape, 0)
  kernel = _random((side, side, shape[-1], out_channels), 1)
  np.testing.assert_allclose(resized_conv2d(x, kernel, out_hw),
                             _resize_then_conv(x, kernel, out_hw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape, out_hw, side, out_channels', CASES[:2] + CASES[3:4])
def test_gradients_equal_those_of_resize_then_convolution(shape, out_hw, side, out_channels):
  x = _random(shape, 2)
  kernel = _random((side, side, shape[-1], out_channels), 3)
  cotangent = _random((shape[0], *out_hw, out_channels), 4)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k, out_hw) * cotangent)
  got = jax.grad(loss(resized_conv2d), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(_resize_then_conv), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
  with jax.default_matmul_precision('highest'):
    check_grads(lambda x, k: resized_conv2d(x, k, out_hw), (x, kernel), order=1,
                modes=('rev',), atol=1e-2, rtol=1e-2)


def test_shifted_weights_are_the_resize_matrix_with_zero_padding():
  # The bilinear (half-pixel) weights written out for 2 -> 4: output i samples
  # input (i + 0.5) / 2 - 0.5, clamped at the edges.
  want = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  weights = np.asarray(shifted_resize_weights(4, 2, 3))
  np.testing.assert_allclose(weights[1], want, atol=1e-6)
  np.testing.assert_allclose(weights[0], np.vstack([np.zeros((1, 2)), want[:3]]), atol=1e-6)
  np.testing.assert_allclose(weights[2], np.vstack([want[1:], np.zeros((1, 2))]), atol=1e-6)


def test_condition_conv_implementations_agree_and_share_parameters():
  cnn_map, tokens = _random((2, 8, 8, 3), 5), _random((2, 2, 2, 4), 6)
  factored = ConditionConv(5, 'factored')
  params = factored.init(jax.random.PRNGKey(0), cnn_map, tokens)
  resized = ConditionConv(5, 'resize')
  assert (jax.tree.map(jnp.shape, resized.init(jax.random.PRNGKey(0), cnn_map, tokens))
          == jax.tree.map(jnp.shape, params))
  params = {'params': {**params['params'], 'bias': jnp.arange(5.0)}}
  np.testing.assert_allclose(factored.apply(params, cnn_map, tokens),
                             resized.apply(params, cnn_map, tokens), rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match='odd'):
    resized_conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((2, 2, 3, 4)), (4, 4))
  with pytest.raises(ValueError, match=r'\(B, h, w, 3\)'):
    resized_conv2d(jnp.zeros((1, 2, 2, 5)), jnp.zeros((3, 3, 3, 4)), (4, 4))
  with pytest.raises(ValueError, match='config.model.align.condition'):
    ConditionConv(5, 'bogus').init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)),
                                   jnp.zeros((1, 2, 2, 3)))
