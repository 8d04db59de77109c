"""timm `convnext_*` state dicts -> `mdiqa_jax.models.convnext.ConvNeXt` names.

  timm                                    ConvNeXt
  stem.0 (conv 4x4/4), stem.1 (LN)        stem_conv, stem_norm
  stages.i.downsample.0 (LN), .1 (conv)   stage{i}_downsample_norm, _conv (i > 0)
  stages.i.blocks.j.conv_dw (C, 1, 7, 7)  stage{i}_block{j}/conv_dw (7, 7, 1, C)
  stages.i.blocks.j.norm                  stage{i}_block{j}/norm
  stages.i.blocks.j.mlp.fc1 / fc2         stage{i}_block{j}/fc1 / fc2
  stages.i.blocks.j.gamma                 stage{i}_block{j}/layer_scale
  head.norm                               head_norm
  head.fc.*                               ignored (classifier)
Conv weights (out, in, kh, kw) become kernels (kh, kw, in, out); Linear
weights (out, in), and the (out, in, 1, 1) 1x1 convs of timm's conv_mlp
models (convnext_atto .. _nano), become Dense kernels (in, out).
GRN (ConvNeXt-V2), head_norm_first and MLP heads have no counterpart.
"""
import re

import numpy as np

_STEM = {'stem.0.weight': 'stem_conv/kernel', 'stem.0.bias': 'stem_conv/bias',
         'stem.1.weight': 'stem_norm/scale', 'stem.1.bias': 'stem_norm/bias',
         'head.norm.weight': 'head_norm/scale', 'head.norm.bias': 'head_norm/bias'}
_DOWNSAMPLE = re.compile(r'stages\.(\d+)\.downsample\.([01])\.(weight|bias)')
_DOWNSAMPLE_RENAMES = {
    ('0', 'weight'): 'downsample_norm/scale', ('0', 'bias'): 'downsample_norm/bias',
    ('1', 'weight'): 'downsample_conv/kernel', ('1', 'bias'): 'downsample_conv/bias',
}
_BLOCK = re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.(.+)')
_BLOCK_RENAMES = {
    'conv_dw.weight': 'conv_dw/kernel', 'conv_dw.bias': 'conv_dw/bias',
    'norm.weight': 'norm/scale', 'norm.bias': 'norm/bias',
    'mlp.fc1.weight': 'fc1/kernel', 'mlp.fc1.bias': 'fc1/bias',
    'mlp.fc2.weight': 'fc2/kernel', 'mlp.fc2.bias': 'fc2/bias',
    'gamma': 'layer_scale',
}


def looks_like(arrays) -> bool:
  return 'stem.0.weight' in arrays and any(name.startswith('stages.') for name in arrays)


def convert(state_dict: dict[str, np.ndarray], *, source: str):
  """Returns ({ConvNeXt param name: array}, [ignored timm names])."""
  params, ignored, unsupported = {}, [], []
  for name, array in state_dict.items():
    downsample = _DOWNSAMPLE.fullmatch(name)
    block = _BLOCK.fullmatch(name)
    if name.startswith('head.fc.'):
      ignored.append(name)
    elif name in _STEM:
      params[_STEM[name]] = _layout(_STEM[name], array)
    elif downsample:
      stage, part, kind = downsample.groups()
      renamed = f'stage{stage}_' + _DOWNSAMPLE_RENAMES[part, kind]
      params[renamed] = _layout(renamed, array)
    elif block and block.group(3) in _BLOCK_RENAMES:
      renamed = f'stage{block.group(1)}_block{block.group(2)}/' + _BLOCK_RENAMES[block.group(3)]
      params[renamed] = _layout(renamed, array)
    else:
      unsupported.append(name)
  if unsupported:
    raise ValueError(f'{source}: timm ConvNeXt arrays with no counterpart in '
                     f'mdiqa_jax.models.convnext.ConvNeXt (GRN, head_norm_first and MLP '
                     f'heads are not supported): {sorted(unsupported)}')
  return params, ignored


def _layout(name, array):
  """A timm array in Flax layout, by the kind of parameter it becomes."""
  if not name.endswith('/kernel'):
    return array
  if name.endswith(('fc1/kernel', 'fc2/kernel')):
    return array.reshape(array.shape[:2]).T  # (out, in[, 1, 1]) -> (in, out).
  return array.transpose(2, 3, 1, 0)  # Conv (out, in, kh, kw) -> (kh, kw, in, out).
