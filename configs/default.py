"""The embedded default: tiny MD-IQA on the small synthetic dataset, CPU-friendly."""
from mdiqa_jax.config_base import base_config


def get_config(arg=None):
  del arg
  return base_config()
