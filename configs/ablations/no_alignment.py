"""Both branches fused without deformable alignment (1x1 projection of each stage, pooled).

  python -m mdiqa_jax.train --config=configs/ablations/no_alignment.py --workdir=runs/no_align
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.use_alignment = False
  return config
