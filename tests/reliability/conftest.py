"""Fixtures of the reliability suite: a prepared fake LDCTIQAC2023 dataset."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_layout_config  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def real_layout_data_dir(tmp_path_factory):
  """A TFDS data_dir holding `ldctiqac2023` built from a fake release (about 5 s)."""
  data_dir = str(tmp_path_factory.mktemp('tfds_release'))
  real_layout_config.build(data_dir, str(tmp_path_factory.mktemp('release')))
  return data_dir
