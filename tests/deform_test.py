"""Tests for mdiqa_jax.ops.deform_conv2d against lax.conv and a loop reference."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mdiqa_jax.ops import deform_conv2d


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


def _output_size(size, kernel_size, stride, padding, dilation):
  return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _lax_conv(x, kernel, stride, padding, dilation):
  (pad_h, pad_w) = _pair(padding)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=_pair(stride),
      padding=[(pad_h, pad_h), (pad_w, pad_w)], rhs_dilation=_pair(dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)


def _bilinear_reference(image, y, x):
  """Bilinear sample of image (H, W, C) at (y, x), torchvision's rules."""
  height, width = image.shape[:2]
  if y <= -1 or y >= height or x <= -1 or x >= width:
    return np.zeros(image.shape[2])
  y_low, x_low = math.floor(y), math.floor(x)
  y_high, x_high = y_low + 1, x_low + 1
  dy, dx = y - y_low, x - x_low
  value = np.zeros(image.shape[2])
  if y_low >= 0 and x_low >= 0:
    value += (1 - dy) * (1 - dx) * image[y_low, x_low]
  if y_low >= 0 and x_high <= width - 1:
    value += (1 - dy) * dx * image[y_low, x_high]
  if y_high <= height - 1 and x_low >= 0:
    value += dy * (1 - dx) * image[y_high, x_low]
  if y_high <= height - 1 and x_high <= width - 1:
    value += dy * dx * image[y_high, x_high]
  return value


def _deform_conv_reference(x, offset, mask, kernel, stride, padding, dilation,
                           offset_groups):
  """Slow float64 deformable convolution with explicit loops."""
  x, offset, kernel = (np.asarray(a, np.float64) for a in (x, offset, kernel))
  batch, _, _, in_channels = x.shape
  kernel_h, kernel_w, _, out_channels = kernel.shape
  _, out_h, out_w, _, _, _ = offset.shape
  if mask is None:
    mask = np.ones(offset.shape[:-1])
  mask = np.asarray(mask, np.float64)
  (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = (
      _pair(stride), _pair(padding), _pair(dilation))
  group_channels = in_channels // offset_groups
  out = np.zeros((batch, out_h, out_w, out_channels))
  for b in range(batch):
    for i in range(out_h):
      for j in range(out_w):
        for g in range(offset_groups):
          channels = slice(g * group_channels, (g + 1) * group_channels)
          for a in range(kernel_h):
            for c in range(kernel_w):
              k = a * kernel_w + c
              dy, dx = offset[b, i, j, g, k]
              y = i * stride_h - pad_h + a * dilation_h + dy
              x_position = j * stride_w - pad_w + c * dilation_w + dx
              sample = _bilinear_reference(x[b, :, :, channels], y, x_position)
              out[b, i, j] += (mask[b, i, j, g, k] * sample
                               @ kernel[a, c, channels])
  return out


def _random_inputs(seed, batch, height, width, in_channels, out_channels,
                   kernel_size, stride, padding, dilation, offset_groups,
                   offset_scale, dtype=np.float32):
  """Returns x, offset, mask, kernel drawn from a seeded generator."""
  rng = np.random.default_rng(seed)
  kernel_h, kernel_w = kernel_size
  (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = (
      _pair(stride), _pair(padding), _pair(dilation))
  out_h = _output_size(height, kernel_h, stride_h, pad_h, dilation_h)
  out_w = _output_size(width, kernel_w, stride_w, pad_w, dilation_w)
  taps = kernel_h * kernel_w
  x = rng.normal(size=(batch, height, width, in_channels))
  offset = offset_scale * rng.normal(
      size=(batch, out_h, out_w, offset_groups, taps, 2))
  mask = rng.uniform(size=(batch, out_h, out_w, offset_groups, taps))
  kernel = rng.normal(size=(kernel_h, kernel_w, in_channels, out_channels))
  return tuple(a.astype(dtype) for a in (x, offset, mask, kernel))


@pytest.mark.parametrize(
    'kernel_size, stride, padding, dilation, offset_groups',
    [((3, 3), 1, 1, 1, 1),
     ((3, 2), 2, (1, 0), (2, 1), 2),
     ((1, 1), 1, 0, 1, 4),
     ((2, 3), (1, 2), 2, 2, 1)])
def test_deform_conv_zero_offsets_equals_conv(kernel_size, stride, padding,
                                              dilation, offset_groups):
  x, offset, mask, kernel = _random_inputs(
      0, 2, 9, 8, 4, 3, kernel_size, stride, padding, dilation, offset_groups,
      offset_scale=0.0)
  expected = _lax_conv(x, kernel, stride, padding, dilation)
  conv = functools.partial(deform_conv2d, stride=stride, padding=padding,
                           dilation=dilation, offset_groups=offset_groups)
  with_unit_mask = conv(x, offset, np.ones_like(mask), kernel)
  without_mask = conv(x, offset, None, kernel)
  assert with_unit_mask.shape == expected.shape
  np.testing.assert_allclose(with_unit_mask, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(without_mask, expected, rtol=1e-5, atol=1e-5)


def test_deform_conv_integer_offsets_equal_conv_of_shifted_image():
  shift_y, shift_x = 1, -2
  x, offset, _, kernel = _random_inputs(
      1, 2, 10, 9, 6, 5, (3, 3), 1, 1, 1, 2, offset_scale=0.0)
  offset[..., 0] = shift_y
  offset[..., 1] = shift_x
  # The convolution's zero padding comes first, then the shift:
  # shifted[i, j] = padded[i + shift_y, j + shift_x], zero where outside.
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = padded.shape[1:3]
  shifted = np.zeros_like(padded)
  shifted[:, :height - shift_y, -shift_x:] = padded[:, shift_y:,
                                                    :width + shift_x]
  expected = _lax_conv(shifted, kernel, 1, 0, 1)
  got = deform_conv2d(x, offset, None, kernel, padding=1, offset_groups=2)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_deform_conv_fractional_offsets_match_loop_reference():
  kernel_size, stride, padding, dilation, offset_groups = (3, 2), 2, 1, 2, 2
  x, offset, mask, kernel = _random_inputs(
      2, 2, 9, 8, 4, 3, kernel_size, stride, padding, dilation, offset_groups,
      offset_scale=3.0)
  # Far outside, exactly on torchvision's cut-off lines (-1 and H or W) and
  # straddling the border, where only some corners are inside.
  height, width = x.shape[1:3]
  offset[0, 0, 0, 0, :4] = [[-20.5, 3.2], [40.0, -0.3], [0.7, -55.0],
                            [0.25, 31.5]]
  offset[1, 1, 2, 1, 0] = [-1 - (1 * 2 - 1), 0.5]  # y == -1 exactly.
  offset[1, 2, 1, 0, 5] = [height - (2 * 2 - 1 + 2 * 2), 0.3]  # y == H.
  offset[0, 3, 3, 1, 1] = [-0.4, width - 0.6 - (3 * 2 - 1 + 2)]  # x in (W-1, W).
  expected = _deform_conv_reference(x, offset, mask, kernel, stride, padding,
                                     dilation, offset_groups)
  got = deform_conv2d(x, offset, mask, kernel, stride=stride, padding=padding,
                      dilation=dilation, offset_groups=offset_groups)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_deform_conv_without_mask_matches_loop_reference():
  x, offset, _, kernel = _random_inputs(
      3, 1, 7, 7, 2, 2, (3, 3), 1, 1, 1, 1, offset_scale=1.5)
  expected = _deform_conv_reference(x, offset, None, kernel, 1, 1, 1, 1)
  got = deform_conv2d(x, offset, None, kernel, padding=1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_deform_conv_gradients_match_finite_differences():
  with jax.enable_x64(True):
    x, offset, mask, kernel = _random_inputs(
        4, 1, 5, 6, 4, 2, (3, 2), 1, 1, 1, 2, offset_scale=0.0,
        dtype=np.float64)
    # Bilinear sampling has kinks where a sample crosses a pixel row or column;
    # keep every sample position strictly between integers so that finite
    # differences of size 1e-4 see a smooth function.
    rng = np.random.default_rng(5)
    offset = (rng.integers(-3, 3, size=offset.shape)
              + rng.uniform(0.2, 0.8, size=offset.shape))
    conv = functools.partial(deform_conv2d, stride=1, padding=1, dilation=1,
                             offset_groups=2)
    check_grads(conv, (x, offset, mask, kernel), order=1, modes=('fwd', 'rev'))
  assert jnp.zeros(()).dtype == jnp.float32  # x64 stays off outside the block.


@pytest.mark.parametrize('rows_per_chunk', [1, 3, 4])
def test_deform_conv_in_row_chunks_matches_loop_reference(rows_per_chunk):
  # 7 output rows: chunks of 1, 3 (padded to 3 x 3 rows) and 4 (2 x 4).
  kernel_size, stride, padding, dilation, offset_groups = (3, 3), 1, 1, 1, 2
  x, offset, mask, kernel = _random_inputs(
      8, 2, 7, 6, 4, 3, kernel_size, stride, padding, dilation, offset_groups,
      offset_scale=2.0)
  expected = _deform_conv_reference(x, offset, mask, kernel, stride, padding,
                                    dilation, offset_groups)
  got = jax.jit(functools.partial(deform_conv2d, padding=padding,
                                  offset_groups=offset_groups,
                                  rows_per_chunk=rows_per_chunk))(x, offset, mask, kernel)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_deform_conv_in_row_chunks_gradients_match_finite_differences():
  with jax.enable_x64(True):
    x, offset, mask, kernel = _random_inputs(
        9, 1, 5, 6, 4, 2, (3, 3), 1, 1, 1, 2, offset_scale=0.0,
        dtype=np.float64)
    rng = np.random.default_rng(10)
    offset = (rng.integers(-3, 3, size=offset.shape)
              + rng.uniform(0.2, 0.8, size=offset.shape))
    conv = functools.partial(deform_conv2d, padding=1, offset_groups=2,
                             rows_per_chunk=2)
    check_grads(conv, (x, offset, mask, kernel), order=1, modes=('rev',))
  assert jnp.zeros(()).dtype == jnp.float32


def test_deform_conv_jit_matches_eager_and_bias_adds():
  x, offset, mask, kernel = _random_inputs(
      6, 2, 8, 8, 4, 6, (3, 3), 2, 1, 1, 2, offset_scale=2.0)
  bias = np.arange(6, dtype=np.float32)
  conv = functools.partial(deform_conv2d, stride=2, padding=1, offset_groups=2)
  eager = conv(x, offset, mask, kernel)
  jitted = jax.jit(conv)(x, offset, mask, kernel)
  jitted_no_mask = jax.jit(lambda *a: conv(*a, None, kernel))(x, offset)
  with_bias = jax.jit(functools.partial(conv, bias=bias))(x, offset, mask,
                                                           kernel)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jitted_no_mask, conv(x, offset, None, kernel),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(with_bias, eager + bias, rtol=1e-6, atol=1e-6)


def _largest_intermediate(closed_jaxpr):
  """Largest number of elements of any value computed in a (nested) jaxpr."""
  largest = 0
  pending = [closed_jaxpr.jaxpr]
  while pending:
    jaxpr = pending.pop()
    for equation in jaxpr.eqns:
      for var in equation.outvars:
        largest = max(largest, math.prod(getattr(var.aval, 'shape', ())))
      for param in equation.params.values():
        for sub in param if isinstance(param, (list, tuple)) else (param,):
          if hasattr(sub, 'eqns'):
            pending.append(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            pending.append(sub.jaxpr)
  return largest


def test_deform_conv_memory_is_linear_in_samples():
  batch, size, channels, taps = 2, 24, 4, 9
  x, offset, mask, kernel = _random_inputs(
      7, batch, size, size, channels, channels, (3, 3), 1, 1, 1, 1,
      offset_scale=2.0)

  def loss(*args):
    return jnp.sum(deform_conv2d(*args, padding=1) ** 2)

  gradient = jax.grad(loss, argnums=(0, 1, 2, 3))
  largest = _largest_intermediate(jax.make_jaxpr(gradient)(x, offset, mask,
                                                           kernel))
  corner_samples = 4 * batch * size * size * taps * channels
  dense_interpolation = batch * (size * size) ** 2
  assert 2 * corner_samples < dense_interpolation
  assert largest <= corner_samples


def test_deform_conv_row_chunks_bound_the_largest_intermediate():
  batch, size, channels, taps, rows = 2, 24, 8, 9, 6
  x, offset, mask, kernel = _random_inputs(
      11, batch, size, size, channels, channels, (3, 3), 1, 1, 1, 1,
      offset_scale=2.0)

  def loss(*args):
    return jnp.sum(deform_conv2d(*args, padding=1, rows_per_chunk=rows) ** 2)

  gradient = jax.grad(loss, argnums=(0, 1, 2, 3))
  largest = _largest_intermediate(jax.make_jaxpr(gradient)(x, offset, mask,
                                                           kernel))
  corners_of_one_chunk = 4 * batch * rows * size * taps * channels
  # 4 chunks: no value is larger than one chunk's corners (the corner indices
  # and weights of all rows, 4 * B * H * W * kh * kw, are C times smaller).
  assert largest <= corners_of_one_chunk


@pytest.mark.parametrize('change, message', [
    (dict(x=np.zeros((8, 8, 4))), 'x must be'),
    (dict(kernel=np.zeros((3, 3, 5, 2))), 'kernel input channels'),
    (dict(offset_groups=3), 'offset_groups must be'),
    (dict(offset=np.zeros((2, 8, 8, 2, 9, 2))), r'offset must have shape'),
    (dict(offset=np.zeros((2, 7, 8, 1, 9, 2))), r'\(2, 8, 8, 1, 9, 2\)'),
    (dict(mask=np.zeros((2, 8, 8, 1, 4))), 'mask must have shape'),
    (dict(stride=0), 'stride must be'),
    (dict(padding=(1, 1, 1)), 'padding must be'),
    (dict(dilation=5), 'does not fit'),
    (dict(bias=np.zeros(3)), 'bias must have shape'),
    (dict(rows_per_chunk=0), 'rows_per_chunk must be'),
])
def test_deform_conv_bad_arguments_raise_value_error(change, message):
  arguments = dict(x=np.zeros((2, 8, 8, 4)), offset=np.zeros((2, 8, 8, 1, 9, 2)),
                   mask=np.ones((2, 8, 8, 1, 9)), kernel=np.zeros((3, 3, 4, 2)),
                   padding=1)
  arguments.update(change)
  with pytest.raises(ValueError, match=message):
    deform_conv2d(**arguments)
