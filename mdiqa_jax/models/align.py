"""Dual-branch alignment: ViT-guided deformable sampling of CNN features.

At each of S scales (the first S ConvNeXt stages, finest first) the ViT tokens
are resized to the stage's grid and concatenated with the CNN map; two 3x3
convolutions predict, per output pixel, N = kernel_size**2 sampling offsets
(dy, dx) and modulation masks per offset group (AHIQ / DCNv2). The CNN map is
resampled with `deform_conv2d` at those points, then pooled (or resized) to the
ViT token grid. Offsets start at zero and masks at one, so at initialisation the
module is a plain convolution of the CNN features.

`PlainFusion` is the ablation without alignment: each stage goes through a 1x1
convolution and is pooled to the grid.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdiqa_jax.ops import deform_conv2d
from mdiqa_jax.ops import resized_conv2d

# How the conditioning convolution sees the ViT tokens: 'factored' convolves
# them at their own resolution through `resized_conv2d`; 'resize' upsamples
# them to the stage's grid first. The same function (to float rounding).
CONDITION_IMPLEMENTATIONS = ('factored', 'resize')


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class ConditionConv(nn.Module):
  """3x3 convolution of concat(cnn_map, tokens bilinearly resized to its grid).

  (B, H, W, Cs), (B, h, w, D) -> (B, H, W, width). Parameters are those of
  `nn.Conv(width, (3, 3))` on the Cs + D channels ('kernel' (3, 3, Cs + D,
  width), 'bias'), so either implementation loads the other's checkpoints.
  """
  width: int
  implementation: str = 'factored'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cnn_map, vit_tokens):
    if self.implementation not in CONDITION_IMPLEMENTATIONS:
      raise ValueError(f'config.model.align.condition={self.implementation!r}; expected '
                       f'one of {CONDITION_IMPLEMENTATIONS}.')
    batch, height, width, channels = cnn_map.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, channels + vit_tokens.shape[-1], self.width))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.width,))
    cnn_map, vit_tokens, kernel, bias = nn.dtypes.promote_dtype(
        cnn_map, vit_tokens, kernel, bias, dtype=self.dtype)
    if self.implementation == 'resize':
      resized = jax.image.resize(vit_tokens, (batch, height, width, vit_tokens.shape[-1]),
                                 'bilinear')
      return _conv_same(jnp.concatenate([cnn_map, resized], axis=-1), kernel) + bias
    return (_conv_same(cnn_map, kernel[:, :, :channels])
            + resized_conv2d(vit_tokens, kernel[:, :, channels:], (height, width)) + bias)


def to_grid(x: jax.Array, grid_hw: Sequence[int]) -> jax.Array:
  """Brings (B, H, W, C) to (B, h, w, C): average pooling when H, W are integer
  multiples of h, w (each grid cell summarises its own pixels), else bilinear."""
  _, height, width, _ = x.shape
  grid_h, grid_w = grid_hw
  if (height, width) == (grid_h, grid_w):
    return x
  if height % grid_h == 0 and width % grid_w == 0:
    window = (height // grid_h, width // grid_w)
    return nn.avg_pool(x, window, strides=window)
  return jax.image.resize(x, (x.shape[0], grid_h, grid_w, x.shape[-1]), 'bilinear')


class DeformableAlign(nn.Module):
  """Aligns one CNN map to ViT tokens. (B,Hs,Ws,Cs), (B,h,w,D) -> (B,Hs,Ws,width)."""
  width: int
  kernel_size: int = 3
  offset_groups: int = 1
  condition_implementation: str = 'factored'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cnn_map, vit_tokens):
    batch, height, width, channels = cnn_map.shape
    taps = self.kernel_size ** 2
    if channels % self.offset_groups:
      raise ValueError(f'CNN stage with {channels} channels cannot be split into '
                       f'offset_groups={self.offset_groups}.')
    condition = nn.gelu(ConditionConv(self.width, self.condition_implementation, self.dtype,
                                      name='condition')(cnn_map,
                                                        vit_tokens.astype(cnn_map.dtype)))
    zeros = nn.initializers.zeros
    offset = nn.Conv(self.offset_groups * taps * 2, (3, 3), kernel_init=zeros,
                     dtype=self.dtype, name='offset')(condition)
    mask_logits = nn.Conv(self.offset_groups * taps, (3, 3), kernel_init=zeros,
                          dtype=self.dtype, name='mask')(condition)
    offset = offset.reshape(batch, height, width, self.offset_groups, taps, 2)
    mask = 2.0 * jax.nn.sigmoid(mask_logits).reshape(
        batch, height, width, self.offset_groups, taps)
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, channels, self.width))
    bias = self.param('bias', zeros, (self.width,))
    aligned = deform_conv2d(cnn_map.astype(self.dtype), offset.astype(self.dtype),
                            mask.astype(self.dtype), kernel.astype(self.dtype),
                            padding=self.kernel_size // 2)
    return aligned + bias.astype(self.dtype)


class DeformableAlignment(nn.Module):
  """Multi-scale alignment. Returns (B, h, w, S * width) on the ViT grid.

  Args (call): cnn_stages, list of (B, Hs, Ws, Cs) finest first (the first S are
  used); vit_tokens (B, h, w, D); grid_hw (h, w), the tokens' grid.
  """
  num_scales: int
  width: int
  kernel_size: int = 3
  offset_groups: int = 1
  condition_implementation: str = 'factored'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cnn_stages, vit_tokens, grid_hw):
    _check_num_scales(self.num_scales, cnn_stages)
    aligned = []
    for scale, cnn_map in enumerate(cnn_stages[:self.num_scales]):
      x = DeformableAlign(self.width, self.kernel_size, self.offset_groups,
                          self.condition_implementation, self.dtype,
                          name=f'scale_{scale}')(cnn_map, vit_tokens)
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f'norm_{scale}')(nn.gelu(x))
      aligned.append(to_grid(x, grid_hw))
    return jnp.concatenate(aligned, axis=-1)


class PlainFusion(nn.Module):
  """The no-alignment ablation: 1x1 projection of each of the first S stages,
  pooled to the grid. cnn_stages list of (B, Hs, Ws, Cs) -> (B, h, w, S * width).

  Called like DeformableAlignment; the ViT tokens (or None) are not used.
  """
  num_scales: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cnn_stages, vit_tokens, grid_hw):
    del vit_tokens
    _check_num_scales(self.num_scales, cnn_stages)
    projected = []
    for scale, cnn_map in enumerate(cnn_stages[:self.num_scales]):
      x = nn.Dense(self.width, dtype=self.dtype, name=f'project_{scale}')(cnn_map)
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f'norm_{scale}')(nn.gelu(x))
      projected.append(to_grid(x, grid_hw))
    return jnp.concatenate(projected, axis=-1)


def _check_num_scales(num_scales, cnn_stages):
  if not 1 <= num_scales <= len(cnn_stages):
    raise ValueError(f'config.model.align.num_scales={num_scales} must be in '
                     f'[1, {len(cnn_stages)}] (the number of ConvNeXt stages).')
