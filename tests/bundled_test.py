"""The model shipped in the package: its checksum, its record, that it loads into the
model its config describes, that it ranks a denoised real slice above the noisy one,
and that a damaged copy is refused with the file's name."""
import csv
import hashlib
import importlib.resources
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
import pytest
from scipy import ndimage

import mdiqa_jax
from mdiqa_jax.inference import bundled as bundled_model


def _record():
  with open(os.path.join(bundled_model.BUNDLED_DIR, bundled_model.RECORD_FILE)) as f:
    return json.load(f)


def test_the_shipped_parameters_match_their_recorded_checksum_and_size():
  path = os.path.join(bundled_model.BUNDLED_DIR, bundled_model.PARAMS_FILE)
  with open(path, 'rb') as f:
    payload = f.read()
  record = _record()
  assert hashlib.sha256(payload).hexdigest() == record['sha256']
  assert len(payload) == record['params_bytes'] < 20 * 2**20
  for key in ('config', 'dataset', 'trained_by_commit', 'test_metrics', 'real_ct_transfer'):
    assert record[key], key
  assert record['test_metrics']['srocc'] >= 0.92


def test_the_bundled_model_loads_into_the_model_of_its_config():
  config, params, record = bundled_model.load()
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  assert sum(x.size for x in leaves) == record['num_params']
  assert all(x.dtype == np.float32 and np.all(np.isfinite(x)) for x in leaves)
  assert config.data.image_size == record['config']['data']['image_size']


@pytest.fixture(scope='module')
def bundled_scorer():
  return mdiqa_jax.Scorer.load()


def test_a_denoised_real_slice_scores_higher_than_the_noisy_one(bundled_scorer):
  path = importlib.resources.files('data_store').joinpath('data/693_UNCI.dcm')
  ds = pydicom.dcmread(str(path))
  hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)
  noisy = hu + np.random.default_rng(0).normal(0.0, 40.0, hu.shape).astype(np.float32)
  smoothed = ndimage.gaussian_filter(noisy, 1.0)
  result = bundled_scorer.score(np.stack([noisy, smoothed]),
                                pixel_mm=float(ds.PixelSpacing[0]))
  assert result.scores[1] > result.scores[0] + 0.2, result.scores


def test_a_damaged_bundle_is_refused_with_the_file_named(tmp_path):
  for name in (bundled_model.PARAMS_FILE, bundled_model.RECORD_FILE):
    shutil.copy(os.path.join(bundled_model.BUNDLED_DIR, name), tmp_path / name)
  params_path = tmp_path / bundled_model.PARAMS_FILE
  payload = bytearray(params_path.read_bytes())
  payload[len(payload) // 2] ^= 0xFF
  params_path.write_bytes(bytes(payload))
  with pytest.raises(bundled_model.BundledModelError, match='sha256') as error:
    bundled_model.load(str(tmp_path))
  assert str(params_path) in str(error.value)
  (tmp_path / bundled_model.RECORD_FILE).unlink()
  with pytest.raises(bundled_model.BundledModelError, match='no bundled model'):
    bundled_model.load(str(tmp_path))


def _run_predict(*args):
  return subprocess.run([sys.executable, '-m', 'mdiqa_jax.predict', '--noprogress', *args],
                        capture_output=True, text=True, timeout=600)


def test_mdiqa_predict_without_a_checkpoint_scores_with_the_bundled_model(bundled_scorer,
                                                                          tmp_path):
  """The command and the Python API give the same score for the same slice (1e-6)."""
  path = get_testdata_file('CT_small.dcm')
  output = tmp_path / 'scores.csv'
  done = _run_predict(path, f'--output={output}')
  assert done.returncode == 0, done.stderr
  assert 'using the bundled model' in done.stderr
  with open(output) as f:
    row = next(csv.DictReader(f))
  ds = pydicom.dcmread(path)
  hu = apply_rescale(ds.pixel_array, ds)
  result = bundled_scorer.score(hu, pixel_mm=tuple(float(v) for v in ds.PixelSpacing))
  assert abs(float(row['score']) - result.scores[0]) < 1e-6
  assert bundled_scorer.score_files([path])[0]['score'] == pytest.approx(result.scores[0],
                                                                          abs=1e-6)


def test_mdiqa_predict_compare_reports_the_change_between_two_folders(tmp_path):
  ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
  hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)
  rng = np.random.default_rng(5)
  for folder in ('noisy', 'denoised'):
    (tmp_path / folder).mkdir()
  for name in ('a.npy', 'b.npy'):
    noisy = hu + rng.normal(0, 50, hu.shape).astype(np.float32)
    np.save(tmp_path / 'noisy' / name, noisy.astype(np.int16))
    np.save(tmp_path / 'denoised' / name, ndimage.gaussian_filter(noisy, 1.0).astype(np.int16))
  output, plot = tmp_path / 'change.csv', tmp_path / 'change.png'
  done = _run_predict('--compare', str(tmp_path / 'noisy'), str(tmp_path / 'denoised'),
                      '--pixel_mm=0.66', f'--output={output}', f'--plot={plot}')
  assert done.returncode == 0, done.stderr
  with open(output) as f:
    rows = list(csv.DictReader(f))
  assert [row['file'] for row in rows] == ['a.npy', 'b.npy']
  for row in rows:
    assert float(row['change']) == pytest.approx(
        float(row['score_after']) - float(row['score_before']), abs=2e-6)
    assert float(row['change']) > 0  # Smoothing 50 HU of noise helps.
  assert '2 slice pairs' in done.stderr and '100 % improved' in done.stderr
  assert plot.stat().st_size > 1000
  refused = _run_predict('--compare', str(tmp_path / 'noisy'), f'--plot={tmp_path / "other.png"}')
  assert refused.returncode == 1 and 'two folders' in refused.stderr
  refused = _run_predict('--compare', str(tmp_path / 'noisy'), str(tmp_path / 'denoised'),
                         f'--heatmap={tmp_path / "maps"}')
  assert refused.returncode == 1 and '--heatmap' in refused.stderr
  assert not (tmp_path / 'maps').exists()
