"""ConvNeXt backbone (Liu et al. 2022), timm compatible.

The computation is exactly that of timm's `convnext_*` models: a 4x4 stride-4
stem conv + LayerNorm, then four stages, each (after the first) opened by
LayerNorm + 2x2 stride-2 conv, of blocks
  x + drop_path(gamma * fc2(gelu(fc1(norm(depthwise_conv7x7(x)))))).
All LayerNorms normalise over channels with eps 1e-6; GELU is exact (erf).
timm's `conv_mlp` variants (atto .. nano: 1x1 convs instead of Linear layers)
compute the same function and load into the same parameters.

The depthwise 7x7 convolution goes through `mdiqa_jax.ops.depthwise_conv2d`
(`depthwise_implementation`: 'auto' picks shifted multiply-adds on CPU, XLA's
grouped convolution elsewhere); its parameters are those of
`nn.Conv(C, (7, 7), feature_group_count=C)`. `remat=True` recomputes each
block's activations in the backward pass instead of storing them.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdiqa_jax.models.norm import layer_norm as _layer_norm
from mdiqa_jax.ops import depthwise_conv2d


_PRESETS = {
    'tiny_cpu': dict(depths=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
    'atto': dict(depths=(2, 2, 6, 2), widths=(40, 80, 160, 320)),
    'tiny': dict(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)),
    'small': dict(depths=(3, 3, 27, 3), widths=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024)),
}

PRESET_NAMES = tuple(_PRESETS)

ARCHITECTURE_FIELDS = ('depths', 'widths')


def convnext_config(name: str) -> dict[str, Any]:
  """Returns `ConvNeXt` keyword arguments of a preset (case-insensitive).

  'atto', 'tiny', 'small', 'base' are timm's convnext_atto / _tiny / _small /
  _base; 'tiny_cpu' is a one-block-per-stage model for tests and CPU runs.
  """
  if name.lower() not in _PRESETS:
    raise ValueError(f'Unknown ConvNeXt preset {name!r}; expected one of {sorted(_PRESETS)}.')
  return dict(_PRESETS[name.lower()])


def decode_variant(section: Any) -> dict[str, Any]:
  """Architecture of a config.model.convnext section: the preset
  `section.variant`, overridden by `depths` / `widths` where not None."""
  variant = section.get('variant')
  kwargs = {field: ConvNeXt.__dataclass_fields__[field].default
            for field in ARCHITECTURE_FIELDS}
  kwargs.update(convnext_config(variant) if variant else {})
  kwargs.update({field: tuple(section[field]) for field in ARCHITECTURE_FIELDS
                 if section.get(field) is not None})
  return kwargs


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution with bias, 'same' padding; (B, H, W, C) -> same.

  Parameters 'kernel' (k, k, 1, C) and 'bias' (C,), initialised as nn.Conv's.
  """
  kernel_size: int = 7
  implementation: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, channels))
    bias = self.param('bias', nn.initializers.zeros_init(), (channels,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_conv2d(x, kernel, padding=self.kernel_size // 2,
                            implementation=self.implementation) + bias


class ConvNeXtBlock(nn.Module):
  """One ConvNeXt block on (B, H, W, C); returns the same shape."""
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32
  depthwise_implementation: str = 'auto'

  @nn.compact
  def __call__(self, x, train=False):
    channels = x.shape[-1]
    y = DepthwiseConv(7, self.depthwise_implementation, self.dtype, name='conv_dw')(x)
    y = _layer_norm(self.dtype, 'norm')(y)
    y = nn.Dense(4 * channels, dtype=self.dtype, name='fc1')(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(channels, dtype=self.dtype, name='fc2')(y)
    if self.layer_scale_init > 0:
      gamma = self.param('layer_scale', nn.initializers.constant(self.layer_scale_init),
                         (channels,))
      y = y * gamma.astype(y.dtype)
    if train and self.drop_path > 0:
      y = _drop_path(y, self.drop_path, self.make_rng('dropout'))
    return x + y


class ConvNeXt(nn.Module):
  """ConvNeXt returning its four stage outputs.

  Input x: (B, H, W, C) float; C is taken from x. Spatial sides are floored at
  each stride, as in timm (use multiples of 32).

  Returns a dict:
    'stages': [(B, H/4, W/4, widths[0]), (B, H/8, W/8, widths[1]),
               (B, H/16, W/16, widths[2]), (B, H/32, W/32, widths[3])];
    'pre_logits': (B, widths[3]), global average pool then the head LayerNorm
      (timm `forward_head(..., pre_logits=True)`).
  Stochastic depth rises linearly from 0 to `drop_path` over all blocks, as in
  timm; it needs the 'dropout' rng when train=True and drop_path > 0.
  `depthwise_implementation` is passed to `depthwise_conv2d`; `remat`
  rematerialises every block.
  """
  depths: Sequence[int] = (3, 3, 9, 3)
  widths: Sequence[int] = (96, 192, 384, 768)
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32
  depthwise_implementation: str = 'auto'
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train=False):
    if len(self.depths) != 4 or len(self.widths) != 4:
      raise ValueError(f'ConvNeXt needs 4 stages; got depths={tuple(self.depths)}, '
                       f'widths={tuple(self.widths)}.')
    drop_rates = np.linspace(0.0, self.drop_path, sum(self.depths))
    # static_argnums counts self: argument 2 is `train`.
    block_class = nn.remat(ConvNeXtBlock, static_argnums=(2,)) if self.remat else ConvNeXtBlock
    x = nn.Conv(self.widths[0], (4, 4), strides=(4, 4), padding='VALID',
                dtype=self.dtype, name='stem_conv')(x)
    x = _layer_norm(self.dtype, 'stem_norm')(x)
    stages = []
    block_index = 0
    for stage, (depth, width) in enumerate(zip(self.depths, self.widths)):
      if stage > 0:
        x = _layer_norm(self.dtype, f'stage{stage}_downsample_norm')(x)
        x = nn.Conv(width, (2, 2), strides=(2, 2), padding='VALID', dtype=self.dtype,
                    name=f'stage{stage}_downsample_conv')(x)
      for block in range(depth):
        x = block_class(float(drop_rates[block_index]), self.layer_scale_init, self.dtype,
                        self.depthwise_implementation,
                        name=f'stage{stage}_block{block}')(x, train)
        block_index += 1
      stages.append(x)
    pre_logits = _layer_norm(self.dtype, 'head_norm')(x.mean(axis=(1, 2)))
    return {'stages': stages, 'pre_logits': pre_logits}


def _drop_path(x, rate, rng):
  """Zeroes whole samples with probability `rate`, scales the rest by 1/(1-rate)."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))
