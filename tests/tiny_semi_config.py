"""Tiny semi-supervised pipeline: two 2-step teachers, soft targets, two rounds of one student.

`--config=tests/tiny_semi_config.py:DATA_DIR` reads the dataset that
`tiny_train_config.build_tiny_dataset(DATA_DIR)` wrote.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_train_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from mdiqa_jax import semi  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(data_dir=None):
  config = tiny_train_config.get_config(data_dir)
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.async_checkpointing = False
  config.semi = semi.semi_config()
  config.semi.teacher_seeds = (1, 2)
  config.semi.strategy = 'soft'
  config.semi.pseudo_weight = 0.5
  config.semi.rounds = 2
  return config
