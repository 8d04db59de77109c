"""Convolution of a bilinearly upsampled map, without forming the upsampled map.

`resized_conv2d(x, kernel, out_hw)` equals
`conv(jax.image.resize(x, (B, *out_hw, C), 'bilinear'), kernel)` (stride 1,
zero 'same' padding), computed as
1. a matrix product at the input's resolution, giving every tap's
   contribution: u[n, p, q, a, b, o] = sum_c x[n, p, q, c] kernel[a, b, c, o];
2. per spatial axis, one small contraction with the resize weights shifted by
   each tap (zero where the tap falls in the padding):
   out[n, i, j, o] = sum_{a, b, p, q} R_h[i + a - ph, p] R_w[j + b - pw, q] u[n, p, q, a, b, o].
Channel mixing and resizing commute (both are linear, one over channels, the
other over pixels), so the result is the same function up to float rounding,
at (h w) / (H W) of the matrix-product cost. In the alignment module the ViT
tokens are upsampled 4x per side to the finest ConvNeXt stage, so its largest
convolution costs 1/16 of the direct one, forward and backward.
"""
import jax
import jax.numpy as jnp


def shifted_resize_weights(out_size: int, in_size: int, kernel_size: int,
                           dtype=jnp.float32) -> jax.Array:
  """(k, out_size, in_size): row i of slice a is row i + a - k // 2 of the
  bilinear resize matrix (zeros outside it, the convolution's zero padding).

  The resize matrix is `jax.image.resize` applied to the identity, so the
  weights are exactly those of `jax.image.resize(..., 'bilinear')`.
  """
  resize = jax.image.resize(jnp.eye(in_size, dtype=jnp.float32), (out_size, in_size),
                            'bilinear')
  pad = kernel_size // 2
  padded = jnp.pad(resize, ((pad, kernel_size - 1 - pad), (0, 0)))
  return jnp.stack([padded[a:a + out_size] for a in range(kernel_size)]).astype(dtype)


def resized_conv2d(x: jax.Array, kernel: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """conv('same', zero padding) of x bilinearly resized to out_hw.

  Args:
    x: (B, h, w, Cin) float.
    kernel: (k, k, Cin, Cout), HWIO, k odd.
    out_hw: (H, W), the resized grid.

  Returns:
    (B, H, W, Cout), dtype the promotion of x and kernel.
  """
  kernel_h, kernel_w, in_channels, out_channels = kernel.shape
  if x.ndim != 4 or x.shape[-1] != in_channels:
    raise ValueError(f'resized_conv2d: x must be (B, h, w, {in_channels}) for kernel '
                     f'{kernel.shape}; got {x.shape}.')
  if kernel_h % 2 == 0 or kernel_w % 2 == 0:
    raise ValueError(f'resized_conv2d: kernel sides must be odd, got {kernel.shape[:2]}.')
  dtype = jnp.result_type(x, kernel)
  _, in_h, in_w, _ = x.shape
  out_h, out_w = out_hw
  weights_h = shifted_resize_weights(out_h, in_h, kernel_h, dtype)  # (a, i, p)
  weights_w = shifted_resize_weights(out_w, in_w, kernel_w, dtype)  # (b, j, q)
  per_tap = jnp.einsum('npqc,abco->npqabo', x.astype(dtype), kernel.astype(dtype))
  along_w = jnp.einsum('bjq,npqabo->npjao', weights_w, per_tap)
  return jnp.einsum('aip,npjao->nijo', weights_h, along_w)
