"""The MD-IQA model: ViT + ConvNeXt branches, deformable alignment, weighted head.

images (B, H, W, 1) in [0, 1]  (windowed CT, as LDCTIQAC2023 ships it)
  -> ViT tokens of chosen blocks (B, h, w, n*D), h = H / patch_size
  -> ConvNeXt stages (B, H/4.., C_s), aligned to the tokens (DeformableAlignment)
     or pooled to the grid (PlainFusion)
  -> concat + Dense(fused_width) per patch
  -> the head named by config.model.head.name (models/head.py HEADS)
  -> dict: score, uncertainty, scale_scores, patch_scores, patch_weights[, log_probs,
     patch_log_probs] (the contract: models/head.py OUTPUTS)
Any branch, the alignment, or the distribution head can be switched off from the
config (see `mdiqa_jax.models.create_model`), which is how the ablations run.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


class MDIQA(nn.Module):
  """Composed model; build it with `mdiqa_jax.models.create_model(config)`.

  Attributes:
    head: a registered head (models/head.py).
    patch_size: side of one grid cell in pixels (the ViT patch size; also used
      as the grid when the ViT branch is off, so ablations share one grid).
    fused_width: channels of the fused per-patch features.
    vit: ViT or None (ablation: no global branch).
    convnext: ConvNeXt or None (ablation: no local branch).
    fusion: DeformableAlignment, PlainFusion, or None (when convnext is None);
      called as fusion(stages, vit_tokens or None, grid_hw).
    input_mean, input_std: images are standardised as (x - mean) / std.
  """
  head: nn.Module
  patch_size: int
  fused_width: int
  vit: Optional[nn.Module] = None
  convnext: Optional[nn.Module] = None
  fusion: Optional[nn.Module] = None
  input_mean: float = 0.5
  input_std: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train=False):
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f'MDIQA expects images of shape (B, H, W, 1), got {images.shape}.')
    _, height, width, _ = images.shape
    multiple = max(self.patch_size, 32 if self.convnext is not None else 1)
    if height % multiple or width % multiple:
      raise ValueError(f'Image side {height}x{width} must be a multiple of {multiple} '
                       '(ViT patch size / ConvNeXt total stride).')
    grid_hw = (height // self.patch_size, width // self.patch_size)
    x = ((images - self.input_mean) / self.input_std).astype(self.dtype)

    parts = []
    vit_tokens = None
    if self.vit is not None:
      vit_tokens = jnp.concatenate(self.vit(x, train=train)['features'], axis=-1)
      parts.append(vit_tokens)
    if self.convnext is not None:
      stages = self.convnext(x, train=train)['stages']
      parts.append(self.fusion(stages, vit_tokens, grid_hw))
    fused = jnp.concatenate([p.astype(self.dtype) for p in parts], axis=-1)
    fused = nn.Dense(self.fused_width, dtype=self.dtype, name='fuse')(fused)
    fused = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='fuse_norm')(nn.gelu(fused))
    return self.head(fused, train=train)

