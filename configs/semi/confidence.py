"""Confidence filter: the half of the unlabeled slices the teachers agree on most, hard targets.

  python -m mdiqa_jax.semi --config=configs/semi/confidence.py --workdir=runs/semi_confidence
"""
from mdiqa_jax import semi
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.semi = semi.semi_config()
  config.semi.strategy = 'confidence'
  return config
