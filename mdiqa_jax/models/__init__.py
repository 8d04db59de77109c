"""Models. `create_model(config)` is the one place that reads config.model."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from mdiqa_jax.models.align import DeformableAlignment, PlainFusion
from mdiqa_jax.models.convnext import ConvNeXt
from mdiqa_jax.models.head import DistributionHead, PointHead
from mdiqa_jax.models.mdiqa import MDIQA
from mdiqa_jax.models.vit import ViT

# Top-level parameter collections that hold (possibly pretrained) backbones;
# optax.multi_transform gives them their own learning rate.
BACKBONE_MODULES = ('vit', 'convnext')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def _dtype(name: str) -> Any:
  if name not in _DTYPES:
    raise ValueError(f'config.model.dtype={name!r}; expected one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


def create_model(config: ml_collections.ConfigDict) -> MDIQA:
  """Builds MDIQA from config.model (K = len(config.loss.sigmas))."""
  model_config = config.model
  dtype = _dtype(model_config.dtype)
  if not (model_config.use_vit or model_config.use_cnn):
    raise ValueError('config.model.use_vit and config.model.use_cnn are both False; '
                     'at least one branch is needed.')
  if model_config.use_alignment and not (model_config.use_vit and model_config.use_cnn):
    raise ValueError('config.model.use_alignment=True aligns CNN features to ViT tokens '
                     'and needs use_vit=True and use_cnn=True; set use_alignment=False '
                     'for a single-branch ablation.')
  vit_config, cnn_config = model_config.vit, model_config.convnext
  align_config, head_config = model_config.align, model_config.head

  vit = None
  if model_config.use_vit:
    vit = ViT(patch_size=vit_config.patch_size, width=vit_config.width,
              depth=vit_config.depth, num_heads=vit_config.num_heads,
              mlp_ratio=vit_config.mlp_ratio,
              feature_blocks=tuple(vit_config.feature_blocks),
              dropout=vit_config.dropout, dtype=dtype, remat=model_config.get('remat', False))
  convnext, fusion = None, None
  if model_config.use_cnn:
    convnext = ConvNeXt(depths=tuple(cnn_config.depths), widths=tuple(cnn_config.widths),
                        drop_path=cnn_config.drop_path, dtype=dtype,
                        remat=model_config.get('remat', False))
    if model_config.use_alignment:
      fusion = DeformableAlignment(num_scales=align_config.num_scales,
                                   width=align_config.width,
                                   kernel_size=align_config.kernel_size,
                                   offset_groups=align_config.offset_groups, dtype=dtype)
    else:
      fusion = PlainFusion(num_scales=align_config.num_scales, width=align_config.width,
                           dtype=dtype)

  if model_config.head_type == 'distribution':
    head = DistributionHead(num_distributions=len(config.loss.sigmas),
                            hidden=head_config.hidden, score_min=head_config.score_min,
                            score_max=head_config.score_max,
                            bin_width=head_config.bin_width, dtype=dtype)
  elif model_config.head_type == 'point':
    head = PointHead(hidden=head_config.hidden, score_min=head_config.score_min,
                     score_max=head_config.score_max, dtype=dtype)
  else:
    raise ValueError(f"config.model.head_type={model_config.head_type!r}; expected "
                     "'distribution' or 'point'.")
  return MDIQA(head=head, patch_size=vit_config.patch_size,
               fused_width=head_config.hidden, vit=vit, convnext=convnext, fusion=fusion,
               input_mean=model_config.input_mean, input_std=model_config.input_std,
               dtype=dtype)


def param_groups(params) -> Any:
  """Labels every leaf 'backbone' (under vit/ or convnext/) or 'head'; same tree."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels = {path: 'backbone' if path[0] in BACKBONE_MODULES else 'head' for path in flat}
  return flax.traverse_util.unflatten_dict(labels)


def count_params(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
