"""Full MD-IQA: ViT + ConvNeXt, deformable alignment, K=3 Gaussian scales (default model).

  python -m mdiqa_jax.train --config=configs/ablations/full.py --workdir=runs/full
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  return base_config()
