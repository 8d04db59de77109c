"""Vision Transformer backbone (Dosovitskiy et al. 2021), timm / big_vision compatible.

The computation is exactly that of timm's `vit_*` models (pre-norm blocks,
LayerNorm eps 1e-6, exact erf GELU, class token, learned absolute position
embedding), so timm and big_vision / AugReg weights load without loss
(`mdiqa_jax.convert`). Parameter names are big_vision's (`models/vit.py`,
linen naming), except that blocks sit at the top level rather than under
'Transformer'.

One layout choice differs from timm: `pos_embedding` holds the patch positions
only, (1, grid_h * grid_w, width), and is added before the class token is
prepended (big_vision's layout). timm's class-token position row is an
input-independent constant, so the converter folds it into `cls`; the outputs
are identical and resizing the embedding never has to split off a class row.

Attention (`softmax_attention`, the function of `jax.nn.dot_product_attention`
laid out for XLA's CPU backend) runs over blocks of at most
`attention_query_chunk` queries, each recomputed in the backward pass, so the
(B, heads, N, N) attention weights are never stored whole (at 448 px, N = 785,
they would be 59 MB per block and image pair). `remat=True` also recomputes
each block's activations in the backward pass instead of storing them. The
residual stream's cotangent passes a `gradient_fusion_barrier` between blocks
(ViT-B/16, 224 px, forward + backward: 1.6x faster on XLA's CPU backend).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdiqa_jax.models.norm import layer_norm as _layer_norm
from mdiqa_jax.ops import gradient_fusion_barrier


# Defaults for 12-block models: the outputs of blocks 4, 8 and 12 (1-based),
# evenly spaced and ending at the last block.
_TWELVE_BLOCK_FEATURES = (3, 7, 11)

_PRESETS = {
    'tiny_cpu': dict(patch_size=16, width=64, depth=4, num_heads=2,
                     feature_blocks=(1, 2, 3)),
    'ti/16': dict(patch_size=16, width=192, depth=12, num_heads=3,
                  feature_blocks=_TWELVE_BLOCK_FEATURES),
    's/16': dict(patch_size=16, width=384, depth=12, num_heads=6,
                 feature_blocks=_TWELVE_BLOCK_FEATURES),
    'b/16': dict(patch_size=16, width=768, depth=12, num_heads=12,
                 feature_blocks=_TWELVE_BLOCK_FEATURES),
    'b/8': dict(patch_size=8, width=768, depth=12, num_heads=12,
                feature_blocks=_TWELVE_BLOCK_FEATURES),
}

PRESET_NAMES = tuple(_PRESETS)

ARCHITECTURE_FIELDS = ('patch_size', 'width', 'depth', 'num_heads', 'mlp_ratio',
                       'feature_blocks')


def vit_config(name: str) -> dict[str, Any]:
  """Returns `ViT` keyword arguments of a preset (case-insensitive: 'B/16' = 'b/16').

  'ti/16', 's/16', 'b/16' and 'b/8' are timm's vit_{tiny,small,base}_patch16_224
  and vit_base_patch8_224 (mlp_ratio 4, class token); 'tiny_cpu' is a 4-block,
  64-wide model for tests and CPU runs.
  """
  if name.lower() not in _PRESETS:
    raise ValueError(f'Unknown ViT preset {name!r}; expected one of {sorted(_PRESETS)}.')
  return dict(_PRESETS[name.lower()])


def decode_variant(section: Any) -> dict[str, Any]:
  """Architecture of a config.model.vit section: the preset `section.variant`,
  with every ARCHITECTURE_FIELDS entry that is not None overriding it
  (variant None: ViT's own defaults, those of B/16)."""
  variant = section.get('variant')
  kwargs = {field: ViT.__dataclass_fields__[field].default for field in ARCHITECTURE_FIELDS}
  kwargs.update(vit_config(variant) if variant else {})
  kwargs.update({field: section[field] for field in ARCHITECTURE_FIELDS
                 if section.get(field) is not None})
  if 'feature_blocks' in kwargs:
    kwargs['feature_blocks'] = tuple(kwargs['feature_blocks'])
  return kwargs


def softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim)) v, the function of `jax.nn.dot_product_attention`.

  Computed heads-major, (B, heads, N, head_dim), so that both products are
  plain batched matrix products, with the softmax normalisation applied after
  the value product (N x head_dim divisions instead of N x N) and the row
  maximum, which only keeps exp() in range, outside the gradient (softmax does
  not depend on it). On XLA's CPU backend, ViT-B/16 at 448 px, forward +
  backward runs 1.4x faster than through `jax.nn.dot_product_attention`.

  Args:
    query: (B, Nq, heads, head_dim); key, value: (B, Nk, heads, head_dim).

  Returns:
    (B, Nq, heads, head_dim), dtype of the inputs.
  """
  dtype = query.dtype
  scale = query.shape[-1] ** -0.5
  query, key, value = (jnp.swapaxes(a, 1, 2) for a in (query, key, value))
  # The softmax in float32 (as jax.nn.dot_product_attention does) for bfloat16 inputs.
  logits = jnp.einsum('bhqd,bhkd->bhqk', query * jnp.asarray(scale, dtype),
                      key).astype(jnp.float32)
  shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(shifted)
  out = (jnp.einsum('bhqk,bhkd->bhqd', weights.astype(value.dtype), value)
         / jnp.sum(weights, axis=-1, keepdims=True))
  return jnp.swapaxes(out, 1, 2).astype(dtype)


def query_chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                            chunk: int) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim)) v, computed for blocks of queries.

  Args:
    query, key, value: (B, N, heads, head_dim).
    chunk: at most this many queries per block; the N queries are split into
      ceil(N / chunk) blocks of equal size (the last may be shorter). With more
      than one block, each is rematerialised (jax.checkpoint), so the backward
      pass stores q, k, v and never the attention weights.

  Returns:
    (B, N, heads, head_dim), dtype of the inputs.
  """
  num_queries = query.shape[1]
  num_chunks = -(-num_queries // chunk)
  if num_chunks == 1:
    return softmax_attention(query, key, value)
  size = -(-num_queries // num_chunks)
  attend = jax.checkpoint(softmax_attention)
  return jnp.concatenate([attend(query[:, start:start + size], key, value)
                          for start in range(0, num_queries, size)], axis=1)


class MlpBlock(nn.Module):
  """Transformer MLP: Dense(mlp_dim), exact GELU, Dense(width); (B, N, width)."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name='Dense_0',
                 kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))(x)
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(width, dtype=self.dtype, name='Dense_1',
                    kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.normal(stddev=1e-6))(x)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  attention_query_chunk: int = 256

  @nn.compact
  def __call__(self, x, train=False):
    y = _layer_norm(self.dtype, 'LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        attention_fn=functools.partial(query_chunked_attention,
                                       chunk=self.attention_query_chunk),
        name='MultiHeadDotProductAttention_0')(y, y, deterministic=True)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = _layer_norm(self.dtype, 'LayerNorm_1')(x)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name='MlpBlock_0')(y, train=train)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class ViT(nn.Module):
  """Vision Transformer returning multi-block token grids.

  Input x: (B, H, W, C) float, H and W multiples of `patch_size`; C is taken
  from x (1 for CT slices, 3 for RGB). The position embedding is created for
  the (H / patch_size, W / patch_size) grid seen at init; loading weights made
  for another grid resamples it (`mdiqa_jax.convert`).

  Returns a dict:
    'features': list, one (B, H/p, W/p, width) patch-token grid per entry of
      `feature_blocks` (0-based block indices, in that order), the block's
      output before the final LayerNorm, class token dropped;
    'pre_logits': (B, width), the class token after the final LayerNorm
      (timm `forward_head(..., pre_logits=True)`); without a class token the
      mean of the normed tokens (big_vision 'gap');
    'tokens': (B, N, width), all tokens after the final LayerNorm, class token
      first when there is one (N = 1 + H/p * W/p).
  """
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  feature_blocks: Sequence[int] = _TWELVE_BLOCK_FEATURES
  dropout: float = 0.0
  use_class_token: bool = True
  dtype: Any = jnp.float32
  attention_query_chunk: int = 256
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train=False):
    bad_blocks = [b for b in self.feature_blocks if not 0 <= b < self.depth]
    if bad_blocks:
      raise ValueError(f'ViT.feature_blocks {tuple(self.feature_blocks)}: blocks '
                       f'{bad_blocks} are outside [0, depth={self.depth}).')
    batch, height, width_px, _ = x.shape
    if height % self.patch_size or width_px % self.patch_size:
      raise ValueError(f'ViT input {height}x{width_px} is not a multiple of '
                       f'patch_size={self.patch_size}.')
    x = nn.Conv(self.width, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding='VALID',
                dtype=self.dtype, name='embedding')(x)
    grid_h, grid_w = x.shape[1:3]
    x = x.reshape(batch, grid_h * grid_w, self.width)
    pos_embedding = self.param(
        'pos_embedding', nn.initializers.normal(stddev=1 / np.sqrt(self.width)),
        (1, grid_h * grid_w, self.width))
    x = x + pos_embedding.astype(x.dtype)
    num_prefix = 0
    if self.use_class_token:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)
      num_prefix = 1
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    block_outputs = {}
    mlp_dim = int(round(self.width * self.mlp_ratio))
    # static_argnums counts self: argument 2 is `train`.
    block_class = nn.remat(Encoder1DBlock, static_argnums=(2,)) if self.remat else Encoder1DBlock
    for index in range(self.depth):
      x = block_class(self.num_heads, mlp_dim, self.dropout, self.dtype,
                      self.attention_query_chunk, name=f'encoderblock_{index}')(x, train)
      x = gradient_fusion_barrier(x)
      if index in self.feature_blocks:
        block_outputs[index] = x[:, num_prefix:].reshape(batch, grid_h, grid_w, self.width)
    tokens = _layer_norm(self.dtype, 'encoder_norm')(x)
    pre_logits = tokens[:, 0] if self.use_class_token else tokens.mean(axis=1)
    return {
        'features': [block_outputs[b] for b in self.feature_blocks],
        'pre_logits': pre_logits,
        'tokens': tokens,
    }
