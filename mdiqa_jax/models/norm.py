"""The LayerNorm both backbones use (timm parity)."""
from typing import Any

import flax.linen as nn

LAYER_NORM_EPSILON = 1e-6


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  """LayerNorm over the last axis, eps 1e-6, two-pass variance.

  Two-pass, as torch computes it: the one-pass E[x^2] - E[x]^2 loses precision
  on residual streams with large means and breaks 1e-5 parity with timm.
  """
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, dtype=dtype,
                      name=name)
