"""ViT branch only (no ConvNeXt, hence no alignment).

  python -m mdiqa_jax.train --config=configs/ablations/vit_only.py --workdir=runs/vit_only
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.use_cnn = False
  config.model.use_alignment = False
  return config
