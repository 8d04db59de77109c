"""Hard pseudo-labels from teachers trained 4x the student's steps (config.num_train_steps > 0).

  python -m mdiqa_jax.semi --config=configs/semi/hard_long_teachers.py --workdir=runs/x \
      --config.num_train_steps=100
"""
from mdiqa_jax import semi
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.semi = semi.semi_config()
  config.semi.strategy = 'hard'
  # A reference: overriding num_train_steps on the command line scales the teachers too.
  config.semi.teacher_num_train_steps = config.get_ref('num_train_steps') * 4
  return config
