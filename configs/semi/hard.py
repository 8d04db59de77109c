"""Hard pseudo-labels: every unlabeled slice, target = the 3 teachers' mean score.

  python -m mdiqa_jax.semi --config=configs/semi/hard.py --workdir=runs/semi_hard
"""
from mdiqa_jax import semi
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.semi = semi.semi_config()
  config.semi.strategy = 'hard'
  return config
