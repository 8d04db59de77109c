"""Models. `create_model(config)` is the one place that reads config.model.

  config.model.vit.name / .convnext.name   backbones, from `BACKBONES`
  config.model.vit.variant='B/16'          architecture preset (fields that are
                                           not None override it)
  config.model.head.name                   head, from `models.head.HEADS`
A new backbone or head is a function registered by name; `create_model` does
not change.
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mdiqa_jax.models import convnext as convnext_lib
from mdiqa_jax.models import vit as vit_lib
from mdiqa_jax.models.align import DeformableAlignment, PlainFusion
from mdiqa_jax.models.head import HEADS
from mdiqa_jax.models.mdiqa import MDIQA
from mdiqa_jax.optim import parameter_names
from mdiqa_jax.registry import Registry

# Backbone builders: (section, dtype=, remat=) -> flax module. The token branch
# (config.model.vit) returns {'features': [(B, h, w, D), ...]}, the stage branch
# (config.model.convnext) {'stages': [(B, H/4, W/4, C0), ..., (B, H/32, W/32, C3)]}.
BACKBONES = Registry('backbone', 'config.model.<branch>.name')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@BACKBONES.register('vit')
def build_vit(section: ml_collections.ConfigDict, *, dtype: Any, remat: bool) -> vit_lib.ViT:
  """ViT of the preset section.variant (+ overrides), timm-compatible."""
  return vit_lib.ViT(**vit_lib.decode_variant(section), dropout=section.dropout, dtype=dtype,
                     remat=remat)


@BACKBONES.register('convnext')
def build_convnext(section: ml_collections.ConfigDict, *, dtype: Any,
                   remat: bool) -> convnext_lib.ConvNeXt:
  """ConvNeXt of the preset section.variant (+ overrides), timm-compatible."""
  return convnext_lib.ConvNeXt(**convnext_lib.decode_variant(section),
                               drop_path=section.drop_path, dtype=dtype, remat=remat)


def _dtype(name: str) -> Any:
  if name not in _DTYPES:
    raise ValueError(f'config.model.dtype={name!r}; expected one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


def patch_size(model_config: ml_collections.ConfigDict) -> int:
  """Side of one cell of the head's patch grid, pixels (the ViT patch size, also
  without the ViT branch, so that ablations share one grid)."""
  return int(vit_lib.decode_variant(model_config.vit)['patch_size'])


def create_model(config: ml_collections.ConfigDict) -> MDIQA:
  """Builds MDIQA from config.model."""
  model_config = config.model
  dtype = _dtype(model_config.dtype)
  remat = bool(model_config.remat)
  if not (model_config.use_vit or model_config.use_cnn):
    raise ValueError('config.model.use_vit and config.model.use_cnn are both False; '
                     'at least one branch is needed.')
  if model_config.use_alignment and not (model_config.use_vit and model_config.use_cnn):
    raise ValueError('config.model.use_alignment=True aligns CNN features to ViT tokens '
                     'and needs use_vit=True and use_cnn=True; set use_alignment=False '
                     'for a single-branch ablation.')
  align_config, head_config = model_config.align, model_config.head

  vit = None
  if model_config.use_vit:
    vit = BACKBONES.get(model_config.vit.name)(model_config.vit, dtype=dtype, remat=remat)
  convnext, fusion = None, None
  if model_config.use_cnn:
    convnext = BACKBONES.get(model_config.convnext.name)(model_config.convnext, dtype=dtype,
                                                         remat=remat)
    if model_config.use_alignment:
      fusion = DeformableAlignment(num_scales=align_config.num_scales,
                                   width=align_config.width,
                                   kernel_size=align_config.kernel_size,
                                   offset_groups=align_config.offset_groups,
                                   condition_implementation=align_config.get(
                                       'condition', 'factored'),
                                   dtype=dtype)
    else:
      fusion = PlainFusion(num_scales=align_config.num_scales, width=align_config.width,
                           dtype=dtype)
  head = HEADS.get(head_config.name)(
      hidden=head_config.hidden, score_min=head_config.score_min,
      score_max=head_config.score_max, bin_width=head_config.bin_width, dtype=dtype,
      **head_config.kwargs)
  return MDIQA(head=head, patch_size=patch_size(model_config),
               fused_width=head_config.hidden, vit=vit, convnext=convnext, fusion=fusion,
               input_mean=model_config.input_mean, input_std=model_config.input_std,
               dtype=dtype)


def param_groups(params) -> Any:
  """Every leaf's '/'-joined path, which config.optim.lr_multipliers' regexes
  match (`optim.parameter_names`); same tree."""
  return parameter_names(params)


def count_params(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
