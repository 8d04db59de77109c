"""No semi-supervision: the full model on the labeled split only (same as ablations/full).

  python -m mdiqa_jax.train --config=configs/semi/none.py --workdir=runs/semi_none
"""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  return base_config()
