"""Modulated deformable convolution (DCNv2) in NHWC / HWIO layout.

Same arithmetic as `torchvision.ops.deform_conv2d`: every kernel tap samples the
input at its regular grid position plus a learned offset, by bilinear
interpolation in which each of the four corner pixels that falls outside the
image contributes zero; the sample is scaled by a modulation mask and the
samples are contracted with the kernel. Input channels are split into
`offset_groups` contiguous groups, each with its own offsets and mask.

The four corners of every sample are fetched with one flat-index gather (no
dense interpolation matrix), 4 * B * R * Wo * kh * kw * Cin values for a chunk
of R output rows. Large outputs are computed R rows at a time (`lax.map`), each
chunk rematerialised in the backward pass (`jax.checkpoint`), so that no more
than about 8M corner values (32 MiB in float32) live at once; small outputs
take one chunk and store their corners for the backward pass. The op is
differentiable in the input, offsets, mask and kernel through JAX autodiff.
"""
import jax
import jax.numpy as jnp

from mdiqa_jax.ops.arguments import IntPair, as_pair

# Corner values (4 per sample and input channel) gathered per chunk of output
# rows: at B2 x 112^2 x 96 and a 3x3 kernel, 12 chunks of 10 rows in place of
# one 347 MB gather, at no loss of speed on a 2-core CPU.
_CORNER_VALUES_PER_CHUNK = 1 << 23


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


def _sample_and_contract(features: jax.Array, flat_index: jax.Array, weight: jax.Array,
                         kernel: jax.Array) -> jax.Array:
  """Bilinear samples of `features` at the corners, contracted with the kernel.

  Args:
    features: (B, G, H * W, Cin / G), the input per offset group.
    flat_index: (B, G, R, Wo, K, 4) int32 corner indices into H * W.
    weight: (B, G, R, Wo, K, 4) corner weights (bilinear times mask).
    kernel: (K, G, Cin / G, Cout).

  Returns:
    (B, R, Wo, Cout).
  """
  batch, groups, _, group_channels = features.shape
  # One gather for all corners, the 4 corners of a sample side by side: its
  # transpose (the scatter-add that forms the gradient w.r.t. x) then writes
  # to neighbouring pixels in turn, which is markedly faster than 4 gathers.
  corners = jnp.take_along_axis(
      features, flat_index.reshape(batch, groups, -1, 1), axis=2,
      mode='promise_in_bounds')
  corners = corners.reshape(flat_index.shape + (group_channels,))
  sampled = jnp.einsum('bghwkq,bghwkqc->bghwkc', weight, corners)
  return jnp.einsum('bghwkc,kgco->bhwo', sampled, kernel)


def _sample_in_row_chunks(features: jax.Array, flat_index: jax.Array, weight: jax.Array,
                          kernel: jax.Array, rows_per_chunk: int) -> jax.Array:
  """`_sample_and_contract` over chunks of at most `rows_per_chunk` output rows.

  Shapes as in `_sample_and_contract` with R = Ho. One chunk is computed
  directly; several run in a `lax.map`, each recomputed in the backward pass.
  """
  out_h = flat_index.shape[2]
  if rows_per_chunk >= out_h:
    return _sample_and_contract(features, flat_index, weight, kernel)
  num_chunks = -(-out_h // rows_per_chunk)
  rows_per_chunk = -(-out_h // num_chunks)
  extra_rows = num_chunks * rows_per_chunk - out_h

  def split_rows(array):
    """(B, G, Ho, ...) -> (num_chunks, B, G, rows_per_chunk, ...); padded rows have
    index 0 and weight 0 and are cut from the output."""
    array = jnp.pad(array, [(0, 0), (0, 0), (0, extra_rows)] + [(0, 0)] * (array.ndim - 3))
    array = array.reshape(array.shape[:2] + (num_chunks, rows_per_chunk) + array.shape[3:])
    return jnp.moveaxis(array, 2, 0)

  sample_chunk = jax.checkpoint(_sample_and_contract)
  out = jax.lax.map(lambda chunk: sample_chunk(features, *chunk, kernel),
                    (split_rows(flat_index), split_rows(weight)))
  out = jnp.moveaxis(out, 0, 1)
  return out.reshape((out.shape[0], num_chunks * rows_per_chunk) + out.shape[3:])[:, :out_h]


def deform_conv2d(x: jax.Array,
                  offset: jax.Array,
                  mask: jax.Array | None,
                  kernel: jax.Array,
                  *,
                  stride: IntPair = 1,
                  padding: IntPair = 0,
                  dilation: IntPair = 1,
                  offset_groups: int = 1,
                  bias: jax.Array | None = None,
                  rows_per_chunk: int | None = None) -> jax.Array:
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
    rows_per_chunk: output rows sampled at once (see the module docstring);
      None keeps each chunk's corners within about 8M values; >= Ho computes
      all rows at once. The result does not depend on it.

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
  if rows_per_chunk is not None and (not isinstance(rows_per_chunk, int)
                                     or rows_per_chunk < 1):
    raise ValueError(f'deform_conv2d: rows_per_chunk must be None or an int >= 1, '
                     f'got {rows_per_chunk!r}.')

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
  kernel = kernel.reshape(taps, offset_groups, group_channels, out_channels)
  if rows_per_chunk is None:
    # A symbolic batch (jax.export) cannot size chunks: size them for one example.
    chunk_batch = batch if isinstance(batch, int) else 1
    rows_per_chunk = max(
        1, _CORNER_VALUES_PER_CHUNK // (4 * chunk_batch * out_w * taps * in_channels))
  out = _sample_in_row_chunks(features, flat_index, weight.astype(x.dtype), kernel,
                              rows_per_chunk)
  if bias is not None:
    out = out + bias
  return out
