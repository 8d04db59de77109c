"""depthwise_conv2d against lax.conv_general_dilated with feature_group_count = C."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mdiqa_jax.ops.depthwise import depthwise_conv2d

# (x shape, kernel (kh, kw), padding): ConvNeXt's 7x7 'same'; no padding; a
# rectangular kernel with per-axis padding; 2 x 54 x 54 x 4 spans several
# kernel-gradient chunks of output rows (16384 cotangent elements = 37 rows of
# 2 x 54 pixels x 4 channels), the last one padded with zero rows.
CASES = [
    ((2, 9, 11, 5), (7, 7), 3),
    ((2, 8, 8, 3), (3, 3), 0),
    ((2, 6, 7, 3), (3, 5), (2, 1)),
    ((2, 54, 54, 4), (7, 7), 3),
]


def _lax_depthwise(x, kernel, padding):
  pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((pad_h, pad_h), (pad_w, pad_w)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1],
      precision=jax.lax.Precision.HIGHEST)


def _random_case(shape, kernel_hw, dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  kernel = jnp.asarray(rng.normal(size=kernel_hw + (1, shape[-1])), dtype)
  return x, kernel


@pytest.mark.parametrize('implementation', ['shifted', 'auto'])
@pytest.mark.parametrize('shape, kernel_hw, padding', CASES)
def test_depthwise_values_and_gradients_equal_lax_grouped_conv(shape, kernel_hw, padding,
                                                               implementation):
  x, kernel = _random_case(shape, kernel_hw)
  ours = lambda x, k: depthwise_conv2d(x, k, padding=padding, implementation=implementation)
  reference = lambda x, k: _lax_depthwise(x, k, padding)
  out, our_vjp = jax.vjp(jax.jit(ours), x, kernel)
  expected, reference_vjp = jax.vjp(reference, x, kernel)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(1), out.shape)
  # The kernel gradient sums B * H * W products, so compare it relative to its scale.
  for ours_gradient, expected_gradient in zip(our_vjp(cotangent), reference_vjp(cotangent)):
    scale = float(jnp.max(jnp.abs(expected_gradient)))
    np.testing.assert_allclose(ours_gradient / scale, expected_gradient / scale, atol=1e-5)


@pytest.mark.parametrize('shape, kernel_hw, padding', CASES[:3])
def test_shifted_depthwise_passes_check_grads_to_second_order_in_float64(shape, kernel_hw,
                                                                         padding):
  with jax.enable_x64(True):
    x, kernel = _random_case(shape, kernel_hw, np.float64)
    check_grads(lambda x, k: depthwise_conv2d(x, k, padding=padding,
                                              implementation='shifted'),
                (x, kernel), order=2, modes=('rev',))
  assert jnp.zeros(()).dtype == jnp.float32  # x64 stays off outside the block.


def test_xla_implementation_is_lax_grouped_conv():
  x, kernel = _random_case((1, 8, 8, 3), (7, 7))
  np.testing.assert_array_equal(depthwise_conv2d(x, kernel, padding=3, implementation='xla'),
                                _lax_depthwise(x, kernel, 3))


def test_shifted_depthwise_in_bfloat16_matches_float32_to_bfloat16_precision():
  x, kernel = _random_case((2, 9, 9, 4), (7, 7))
  out = depthwise_conv2d(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), padding=3,
                         implementation='shifted')
  expected = _lax_depthwise(x.astype(jnp.bfloat16).astype(jnp.float32),
                            kernel.astype(jnp.bfloat16).astype(jnp.float32), 3)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             rtol=2e-2, atol=2e-2 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize('kernel_shape, padding, implementation, message', [
    ((7, 7, 2, 3), 3, 'auto', r'kernel \(kh, kw, 1, C\)'),
    ((7, 7, 1, 3), 7, 'auto', 'at most the kernel side - 1'),
    ((7, 7, 1, 3), -1, 'auto', 'padding must be an int or a pair of ints >= 0'),
    ((7, 7, 1, 3), 3, 'cudnn', "implementation='cudnn'"),
])
def test_depthwise_rejects_bad_arguments(kernel_shape, padding, implementation, message):
  with pytest.raises(ValueError, match=message):
    depthwise_conv2d(jnp.zeros((1, 8, 8, 3)), jnp.zeros(kernel_shape), padding=padding,
                     implementation=implementation)
