"""Pretrained weights: timm / big_vision checkpoints -> mdiqa_jax backbone params.

Training calls `load_pretrained` with the freshly initialised params of one
backbone and the file named by config.model.vit.init_from or
config.model.convnext.init_from; `mdiqa-convert` (main.py) converts a file
once into an Orbax checkpoint that `load_pretrained` reads just the same.
Per family: `vit.load`, `convnext.load`.
"""
from typing import Sequence

from mdiqa_jax.convert import convnext
from mdiqa_jax.convert import vit

FAMILIES = ('vit', 'convnext')


def load_pretrained(params, path, family: str, image_size=None, *,
                    dont_load: Sequence[str] = (), channel_reduction: str = 'sum'):
  """Loads a checkpoint onto one backbone's initialised params.

  Args:
    params: the backbone's params subtree (what `ViT.init` / `ConvNeXt.init`
      return under 'params').
    path: timm .safetensors / .pth, big_vision .npz (ViT only), or an
      `mdiqa-convert` output directory.
    family: 'vit' or 'convnext'.
    image_size: model input size, int or (H, W); used by the ViT to lay out
      its position grid when it is not square, ignored by ConvNeXt.
    dont_load: regular expressions of '/'-joined param names kept from params.
    channel_reduction: 'sum' or 'mean' over the RGB input kernel when the
      model takes one channel.

  Returns:
    (params, LoadReport): report.summary() says what was loaded, resized,
    adapted, left initialised, and which checkpoint arrays were ignored.
  """
  if family == 'vit':
    return vit.load(params, path, dont_load=dont_load, image_size=image_size,
                    channel_reduction=channel_reduction)
  if family == 'convnext':
    return convnext.load(params, path, dont_load=dont_load,
                         channel_reduction=channel_reduction)
  raise ValueError(f'family={family!r}; expected one of {FAMILIES}.')
