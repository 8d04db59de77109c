"""timm `vit_*` state dicts -> `mdiqa_jax.models.vit.ViT` parameter names.

  timm                                   ViT (D width, H heads, hd = D / H)
  patch_embed.proj.weight (D, C, p, p)   embedding/kernel (p, p, C, D)
  cls_token (1, 1, D) + pos_embed[:, :1] cls (1, 1, D)
  pos_embed[:, 1:] (1, N, D)             pos_embedding (1, N, D)
  blocks.i.norm1 / norm2                 encoderblock_i/LayerNorm_0 / LayerNorm_1
  blocks.i.attn.qkv (3D, D), rows q|k|v  .../MultiHeadDotProductAttention_0/
                                           {query,key,value}/kernel (D, H, hd)
  blocks.i.attn.proj (D, D)              .../out/kernel (H, hd, D)
  blocks.i.mlp.fc1 / fc2                 .../MlpBlock_0/Dense_0 / Dense_1
  norm                                   encoder_norm
  head.*                                 ignored (classifier)
Linear weights (out, in) become kernels (in, out); LayerNorm weight -> scale.
Models timm builds with `no_embed_class=True` store no class row in pos_embed;
their pos_embed maps unchanged. Layer scale (ls1/ls2), register tokens,
fc_norm, norm_pre and q/k norms have no counterpart and are reported.
"""
import math
import re

import numpy as np

_BLOCK = re.compile(r'blocks\.(\d+)\.(.+)')
_BLOCK_RENAMES = {
    'norm1.weight': 'LayerNorm_0/scale', 'norm1.bias': 'LayerNorm_0/bias',
    'norm2.weight': 'LayerNorm_1/scale', 'norm2.bias': 'LayerNorm_1/bias',
    'mlp.fc1.weight': 'MlpBlock_0/Dense_0/kernel', 'mlp.fc1.bias': 'MlpBlock_0/Dense_0/bias',
    'mlp.fc2.weight': 'MlpBlock_0/Dense_1/kernel', 'mlp.fc2.bias': 'MlpBlock_0/Dense_1/bias',
}
_ATTENTION = 'MultiHeadDotProductAttention_0'
_TOP_RENAMES = {
    'patch_embed.proj.bias': 'embedding/bias',
    'norm.weight': 'encoder_norm/scale', 'norm.bias': 'encoder_norm/bias',
}


def looks_like(arrays) -> bool:
  return 'patch_embed.proj.weight' in arrays and 'blocks.0.attn.qkv.weight' in arrays


def is_square(count: int) -> bool:
  return count > 0 and math.isqrt(count) ** 2 == count


def convert(state_dict: dict[str, np.ndarray], *, num_heads: int, source: str):
  """Returns ({ViT param name: array}, [ignored timm names]).

  num_heads comes from the target model: timm's fused qkv does not record it.
  """
  params, ignored, unsupported = {}, [], []
  for name, array in state_dict.items():
    block = _BLOCK.fullmatch(name)
    if name.startswith('head.'):
      ignored.append(name)
    elif name == 'patch_embed.proj.weight':
      params['embedding/kernel'] = array.transpose(2, 3, 1, 0)
    elif name in _TOP_RENAMES:
      params[_TOP_RENAMES[name]] = array
    elif name in ('cls_token', 'pos_embed'):
      continue  # Handled together below.
    elif block and block.group(2) in _BLOCK_RENAMES:
      renamed = _BLOCK_RENAMES[block.group(2)]
      params[f'encoderblock_{block.group(1)}/{renamed}'] = (
          array.T if renamed.endswith('kernel') else array)
    elif block and block.group(2) in ('attn.qkv.weight', 'attn.qkv.bias',
                                      'attn.proj.weight', 'attn.proj.bias'):
      prefix = f'encoderblock_{block.group(1)}/{_ATTENTION}/'
      params.update({prefix + k: v for k, v in
                     _attention(block.group(2), array, num_heads, source).items()})
    else:
      unsupported.append(name)
  if unsupported:
    raise ValueError(f'{source}: timm ViT arrays with no counterpart in '
                     f'mdiqa_jax.models.vit.ViT (layer scale, register tokens, fc_norm, '
                     f'norm_pre and q/k norms are not supported): {sorted(unsupported)}')
  params.update(class_and_position(state_dict, source))
  return params, ignored


def _attention(kind, array, num_heads, source):
  """One of timm's qkv / proj arrays as Flax MultiHeadDotProductAttention params."""
  if kind.startswith('attn.proj'):
    width = array.shape[0]
    if kind.endswith('weight'):
      return {'out/kernel': array.T.reshape(num_heads, width // num_heads, width)}
    return {'out/bias': array}
  width = array.shape[0] // 3
  if width % num_heads:
    raise ValueError(f'{source}: width {width} is not divisible by num_heads={num_heads}.')
  head_dim = width // num_heads
  out = {}
  for index, name in enumerate(('query', 'key', 'value')):
    part = array[index * width:(index + 1) * width]
    if kind.endswith('weight'):
      out[f'{name}/kernel'] = part.T.reshape(part.shape[1], num_heads, head_dim)
    else:
      out[f'{name}/bias'] = part.reshape(num_heads, head_dim)
  return out


def class_and_position(state_dict, source):
  """cls and pos_embedding, folding the class token's position row into cls."""
  out = {}
  cls = state_dict.get('cls_token')
  pos_embed = state_dict.get('pos_embed')
  if pos_embed is not None:
    rows = pos_embed.shape[1]
    if cls is not None and not is_square(rows) and is_square(rows - 1):
      cls = cls + pos_embed[:, :1]
      pos_embed = pos_embed[:, 1:]
    elif not is_square(rows):
      raise ValueError(f'{source}: pos_embed has {rows} rows, neither a square grid nor '
                       'a square grid plus a class-token row.')
    out['pos_embedding'] = pos_embed
  if cls is not None:
    out['cls'] = cls
  return out
