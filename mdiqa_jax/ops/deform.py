"""Modulated deformable convolution (DCNv2) in NHWC / HWIO layout.

Same arithmetic as `torchvision.ops.deform_conv2d`: every kernel tap samples the
input at its regular grid position plus a learned offset, by bilinear
interpolation in which each of the four corner pixels that falls outside the
image contributes zero; the sample is scaled by a modulation mask and the
samples are contracted with the kernel. Input channels are split into
`offset_groups` contiguous groups, each with its own offsets and mask.

The four corners of every sample are fetched with one flat-index gather, so the
largest intermediate holds 4 * B * Ho * Wo * kh * kw * Cin values (no dense
interpolation matrix), and the op is differentiable in the input, offsets, mask
and kernel through ordinary JAX autodiff.
"""
import jax
import jax.numpy as jnp

from mdiqa_jax.ops.arguments import IntPair, as_pair


def _check_shape(name: str, array: jax.Array, expected: tuple[int, ...],
                 description: str) -> None:
  if tuple(array.shape) != expected:
    raise ValueError(
        f'deform_conv2d: {name} must have shape {description} = {expected}, '
        f'got {tuple(array.shape)}.')


def _bilinear_corners(y: jax.Array, x: jax.Array, height: int,
                      width: int) -> tuple[jax.Array, jax.Array]:
  """Flat indices and weights of the 4 bilinear corners of each sample point.

  Args:
    y: sample rows, any shape S, float (pixel units, 0 = first row centre).
    x: sample columns, shape S.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    flat_index: (*S, 4) int32, row * width + column of the corners (top-left,
      top-right, bottom-left, bottom-right), clipped into the image so that
      they can be gathered without bounds checks.
    weight: (*S, 4), dtype of `y`; the bilinear weights of the corners, zero
      for a corner outside the image.
  """
  y_low = jnp.floor(y)
  x_low = jnp.floor(x)
  y_frac = y - y_low
  x_frac = x - x_low
  y_low = y_low.astype(jnp.int32)
  x_low = x_low.astype(jnp.int32)
  flat_indices, weights = [], []
  for row_step, row_weight in ((0, 1 - y_frac), (1, y_frac)):
    row = y_low + row_step
    for column_step, column_weight in ((0, 1 - x_frac), (1, x_frac)):
      column = x_low + column_step
      inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
      flat_indices.append(jnp.clip(row, 0, height - 1) * width
                          + jnp.clip(column, 0, width - 1))
      weights.append(jnp.where(inside, row_weight * column_weight, 0))
  return jnp.stack(flat_indices, axis=-1), jnp.stack(weights, axis=-1)


def deform_conv2d(x: jax.Array,
                  offset: jax.Array,
                  mask: jax.Array | None,
                  kernel: jax.Array,
                  *,
                  stride: IntPair = 1,
                  padding: IntPair = 0,
                  dilation: IntPair = 1,
                  offset_groups: int = 1,
                  bias: jax.Array | None = None) -> jax.Array:
  """Modulated deformable 2-D convolution (DCNv2), torchvision semantics.

  Output pixel (i, j), tap k = a * kw + b (row-major over the kernel window)
  samples `x` at row i * stride_h - pad_h + a * dilation_h + dy and column
  j * stride_w - pad_w + b * dilation_w + dx, where (dy, dx) is the tap's
  offset in pixels; the bilinear sample (corners outside the image count as
  zero) is multiplied by the tap's mask value and by the kernel.

  Args:
    x: (B, H, W, Cin) float input.
    offset: (B, Ho, Wo, offset_groups, kh * kw, 2) float offsets in pixels,
      last axis (dy, dx).
    mask: (B, Ho, Wo, offset_groups, kh * kw) float modulation (usually a
      sigmoid output in [0, 1]), or None for all ones (DCNv1).
    kernel: (kh, kw, Cin, Cout) float kernel, HWIO.
    stride: int or (stride_h, stride_w), >= 1.
    padding: int or (pad_h, pad_w), >= 0, symmetric zero padding.
    dilation: int or (dilation_h, dilation_w), >= 1.
    offset_groups: number of contiguous input-channel groups, each with its
      own offsets and mask; must divide Cin.
    bias: optional (Cout,) added to the output.

  Returns:
    (B, Ho, Wo, Cout), with Ho = (H + 2 * pad_h - dilation_h * (kh - 1) - 1)
    // stride_h + 1 and Wo likewise; dtype is the promotion of x and kernel.

  Raises:
    ValueError: if an argument's shape or a hyper-parameter is inconsistent.
  """
  stride_h, stride_w = as_pair('deform_conv2d', 'stride', stride, minimum=1)
  pad_h, pad_w = as_pair('deform_conv2d', 'padding', padding, minimum=0)
  dilation_h, dilation_w = as_pair('deform_conv2d', 'dilation', dilation, minimum=1)
  if x.ndim != 4:
    raise ValueError(
        f'deform_conv2d: x must be (B, H, W, Cin), got shape {x.shape}.')
  if kernel.ndim != 4:
    raise ValueError('deform_conv2d: kernel must be (kh, kw, Cin, Cout), got '
                     f'shape {kernel.shape}.')
  batch, height, width, in_channels = x.shape
  kernel_h, kernel_w, kernel_in_channels, out_channels = kernel.shape
  if kernel_in_channels != in_channels:
    raise ValueError(
        f'deform_conv2d: kernel input channels ({kernel_in_channels}, axis 2 '
        f'of kernel shape {kernel.shape}) must equal Cin of x ({in_channels}).')
  if (not isinstance(offset_groups, int) or offset_groups < 1
      or in_channels % offset_groups):
    raise ValueError(
        f'deform_conv2d: offset_groups must be a positive int dividing Cin = '
        f'{in_channels}, got {offset_groups!r}.')
  out_h = (height + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
  out_w = (width + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(
        f'deform_conv2d: the dilated kernel ({kernel_h}x{kernel_w}, dilation '
        f'{(dilation_h, dilation_w)}) does not fit the padded input '
        f'({height}x{width}, padding {(pad_h, pad_w)}).')
  taps = kernel_h * kernel_w
  _check_shape('offset', offset,
               (batch, out_h, out_w, offset_groups, taps, 2),
               '(B, Ho, Wo, offset_groups, kh * kw, 2)')
  if mask is not None:
    _check_shape('mask', mask, (batch, out_h, out_w, offset_groups, taps),
                 '(B, Ho, Wo, offset_groups, kh * kw)')
  if bias is not None:
    _check_shape('bias', bias, (out_channels,), '(Cout,)')

  # Positions are computed in at least float32 so that bfloat16 offsets on
  # large images still address the right pixel.
  coordinate_dtype = jnp.promote_types(offset.dtype, jnp.float32)
  tap_rows = jnp.repeat(jnp.arange(kernel_h) * dilation_h, kernel_w)
  tap_columns = jnp.tile(jnp.arange(kernel_w) * dilation_w, kernel_h)
  grid_rows = jnp.arange(out_h) * stride_h - pad_h
  grid_columns = jnp.arange(out_w) * stride_w - pad_w
  # Group-major layout (B, G, Ho, Wo, K) keeps every gather a batched row
  # lookup into the (B, G, H * W, Cin / G) view of x.
  offset = jnp.moveaxis(offset.astype(coordinate_dtype), 3, 1)
  rows = (grid_rows[:, None, None] + tap_rows) + offset[..., 0]
  columns = (grid_columns[:, None] + tap_columns) + offset[..., 1]

  flat_index, weight = _bilinear_corners(rows, columns, height, width)
  if mask is not None:
    weight = weight * jnp.moveaxis(mask, 3, 1)[..., None]

  group_channels = in_channels // offset_groups
  features = x.reshape(batch, height * width, offset_groups, group_channels)
  features = jnp.moveaxis(features, 2, 1)
  # One gather for all corners, the 4 corners of a sample side by side: its
  # transpose (the scatter-add that forms the gradient w.r.t. x) then writes
  # to neighbouring pixels in turn, which is markedly faster than 4 gathers.
  corners = jnp.take_along_axis(
      features, flat_index.reshape(batch, offset_groups, -1, 1), axis=2,
      mode='promise_in_bounds')
  corners = corners.reshape(flat_index.shape + (group_channels,))
  sampled = jnp.einsum('bghwkq,bghwkqc->bghwkc', weight.astype(x.dtype),
                       corners)
  kernel = kernel.reshape(taps, offset_groups, group_channels, out_channels)
  out = jnp.einsum('bghwkc,kgco->bhwo', sampled, kernel)
  if bias is not None:
    out = out + bias
  return out
