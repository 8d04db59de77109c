"""Soft pseudo-labels: every unlabeled slice, targets = the 3 teachers' mean distributions.

  python -m mdiqa_jax.semi --config=configs/semi/soft.py --workdir=runs/semi_soft
"""
from mdiqa_jax import semi
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.semi = semi.semi_config()
  config.semi.strategy = 'soft'
  return config
