"""One Gaussian target scale (K=1, sigma 0.25) instead of K=3 (0.1, 0.25, 0.5).

  python -m mdiqa_jax.train --config=configs/ablations/single_scale.py --workdir=runs/single
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.head.kwargs.num_distributions = 1
  config.loss.kwargs.sigmas = (0.25,)
  config.loss.kwargs.scale_weights = (1.0,)
  return config
