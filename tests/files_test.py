"""Atomic writes: the old file survives a failed write, and no temporary is left behind."""
import json
import os

import numpy as np
import pytest

from mdiqa_jax import files


def test_write_json_round_trips_and_replaces(tmp_path):
  path = str(tmp_path / 'sub' / 'metrics.json')
  files.write_json_atomically(path, {'b': 1.5, 'a': [1, 2]})
  files.write_json_atomically(path, {'srocc': 0.25})
  with open(path, encoding='utf-8') as f:
    assert json.load(f) == {'srocc': 0.25}
  assert os.listdir(tmp_path / 'sub') == ['metrics.json']


def test_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / 'report.csv'
  path.write_text('old\n')

  class Interrupted(Exception):
    pass

  with pytest.raises(Interrupted):
    with files.atomic_path(str(path)) as temporary:
      with open(temporary, 'w', encoding='utf-8') as f:
        f.write('half of the new')
      raise Interrupted()
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['report.csv']


def test_atomic_path_keeps_the_extension_for_format_sniffing_writers(tmp_path):
  path = str(tmp_path / 'selection.npz')
  with files.atomic_path(path) as temporary:
    assert temporary.endswith('.npz')
    np.savez(temporary, index=np.arange(3))
  with np.load(path) as loaded:
    np.testing.assert_array_equal(loaded['index'], [0, 1, 2])
  assert os.listdir(tmp_path) == ['selection.npz']


def test_save_figure_writes_a_png_and_nothing_else(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(2, 1))
  axis.plot([0, 1], [1, 0])
  path = tmp_path / 'plots' / 'line.png'
  files.save_figure_atomically(figure, str(path), dpi=50)
  plt.close(figure)
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size == (100, 50)
  assert os.listdir(tmp_path / 'plots') == ['line.png']


def test_written_files_get_the_umask_permissions_like_open_would(tmp_path):
  reference = tmp_path / 'reference.txt'
  reference.write_text('x')
  path = tmp_path / 'atomic.txt'
  files.write_text_atomically(str(path), 'x')
  assert os.stat(path).st_mode == os.stat(reference).st_mode
