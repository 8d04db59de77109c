"""Point regression with an L1 loss instead of score distributions.

  python -m mdiqa_jax.train --config=configs/ablations/point_l1.py --workdir=runs/point_l1
"""
import ml_collections

from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.head.name = 'point'
  config.model.head.kwargs = ml_collections.ConfigDict()
  config.loss.name = 'l1'
  config.loss.kwargs = ml_collections.ConfigDict()
  return config
