"""big_vision / AugReg ViT .npz checkpoints -> `mdiqa_jax.models.vit.ViT` names.

Two naming generations exist, both '/'-joined Flax paths:
  * google-research/vision_transformer (the AugReg release): pre-linen module
    numbering, encoderblock_i/{LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3}, and Transformer/posembed_input/pos_embedding with
    a class-token row first (posemb added after [cls] is prepended);
  * big_vision models/vit.py: linen numbering {LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}, a top-level
    pos_embedding over the patches only, and with scan=True a single
    Transformer/encoderblock whose arrays are stacked over blocks.
Full training checkpoints nest the params under 'params/' or 'opt/target/';
everything outside that prefix (optimizer state) is ignored. Our ViT uses
big_vision's linen names, so after these renames kernels map unchanged.

Note: these weights were trained with the tanh approximation of GELU; ViT
applies the exact GELU, as timm does with the same AugReg weights.
"""
import re

import numpy as np

from mdiqa_jax.convert import timm_vit

_PARAM_PREFIXES = ('params/', 'opt/target/')
_PRE_LINEN_RENAMES = {
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
_BLOCK_MODULES = ('LayerNorm_0', 'LayerNorm_1', 'MultiHeadDotProductAttention_0',
                  'MlpBlock_0')
_UNBLOCK = re.compile(r'Transformer/encoderblock_(\d+)/(.+)')
_SCANNED = re.compile(r'Transformer/encoderblock/(.+)')
_POSITION_NAMES = ('pos_embedding', 'Transformer/pos_embedding',
                   'Transformer/posembed_input/pos_embedding')
_TOP_NAMES = ('embedding/kernel', 'embedding/bias', 'cls',
              'Transformer/encoder_norm/scale', 'Transformer/encoder_norm/bias')


def looks_like(arrays) -> bool:
  return any(name.endswith('embedding/kernel') for name in arrays) and any(
      'Transformer/encoderblock' in name for name in arrays)


def convert(arrays: dict[str, np.ndarray], *, source: str):
  """Returns ({ViT param name: array}, [ignored checkpoint names])."""
  arrays, ignored = _strip_prefix(arrays)
  pre_linen = any('MlpBlock_3' in name for name in arrays)
  params, positions, unsupported = {}, {}, []
  for name, array in arrays.items():
    unblocked = _UNBLOCK.fullmatch(name)
    scanned = _SCANNED.fullmatch(name)
    if name.startswith(('head/', 'pre_logits/')):
      ignored.append(name)
    elif name in _POSITION_NAMES:
      positions['pos_embed'] = array
    elif name == 'cls':
      positions['cls_token'] = array
    elif name in _TOP_NAMES:
      params[name.removeprefix('Transformer/')] = array
    elif unblocked and _rename_block_path(unblocked.group(2), pre_linen):
      inner = _rename_block_path(unblocked.group(2), pre_linen)
      params[f'encoderblock_{unblocked.group(1)}/{inner}'] = array
    elif scanned and _rename_block_path(scanned.group(1), pre_linen):
      inner = _rename_block_path(scanned.group(1), pre_linen)
      for index, block_array in enumerate(array):
        params[f'encoderblock_{index}/{inner}'] = block_array
    else:
      unsupported.append(name)
  if unsupported:
    raise ValueError(f'{source}: big_vision ViT arrays with no counterpart in '
                     f'mdiqa_jax.models.vit.ViT (MAP heads, register tokens and '
                     f'representation layers are not supported): {sorted(unsupported)}')
  # The [cls]-row folding rule is the same as timm's layout.
  params.update(timm_vit.class_and_position(positions, source))
  return params, ignored


def _strip_prefix(arrays):
  """Params under 'params/' or 'opt/target/' when nested, with the rest ignored."""
  for prefix in _PARAM_PREFIXES:
    if any(name.startswith(prefix) for name in arrays):
      inside = {n.removeprefix(prefix): a for n, a in arrays.items() if n.startswith(prefix)}
      return inside, sorted(n for n in arrays if not n.startswith(prefix))
  return dict(arrays), []


def _rename_block_path(path, pre_linen):
  """A path inside one encoder block in our names, or None when unknown."""
  module, _, rest = path.partition('/')
  if pre_linen:
    if module in ('LayerNorm_1', 'MlpBlock_0', 'MultiHeadDotProductAttention_0'):
      return None  # Pre-linen files number modules 0..3; these names do not occur.
    module = _PRE_LINEN_RENAMES.get(module, module)
  return f'{module}/{rest}' if module in _BLOCK_MODULES and rest else None
