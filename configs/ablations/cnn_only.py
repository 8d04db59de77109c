"""ConvNeXt branch only (no ViT, hence no alignment).

  python -m mdiqa_jax.train --config=configs/ablations/cnn_only.py --workdir=runs/cnn_only
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.use_vit = False
  config.model.use_alignment = False
  return config
