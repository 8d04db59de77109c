"""The Python API: Scorer.score / score_files against mdiqa-predict, its input checks,
and mdiqa-predict --compare's pairing and summary."""
import os

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
import pytest
from scipy import ndimage

from mdiqa_jax.inference import compare
from mdiqa_jax.inference import paths as paths_lib
from mdiqa_jax.inference import scorer as scorer_lib


@pytest.fixture(scope='module')
def scorer(tiny_checkpoint):
  return scorer_lib.Scorer.load(tiny_checkpoint.workdir)


def _ct_small():
  ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
  return apply_rescale(ds.pixel_array, ds).astype(np.float32), float(ds.PixelSpacing[0])


def test_score_equals_what_predict_writes_for_the_same_slice(scorer, tmp_path):
  hu, pixel_mm = _ct_small()
  result = scorer.score(hu, pixel_mm=pixel_mm)
  rows = scorer.score_files([get_testdata_file('CT_small.dcm')])
  assert len(rows) == 1 and rows[0]['error'] == ''
  assert result.scores.shape == (1,) and result.uncertainties.shape == (1,)
  assert abs(result.scores[0] - rows[0]['score']) < 1e-6
  assert abs(result.uncertainties[0] - rows[0]['uncertainty']) < 1e-6
  assert result.heatmaps[0].shape == hu.shape and result.weight_maps[0].shape == hu.shape
  assert abs(float(np.nansum(result.weight_maps[0])) - 1.0) < 1e-3
  assert result.notes == [[]]
  # The command writes the same number.
  output = tmp_path / 'scores.csv'
  predict_rows, failures = paths_lib.predict_paths(scorer.config, scorer.params,
                                                 [get_testdata_file('CT_small.dcm')])
  assert not failures and abs(predict_rows[0]['score'] - result.scores[0]) < 1e-6
  del output


def test_score_takes_stacks_and_notes_assumed_and_resampled_spacings(scorer):
  hu, pixel_mm = _ct_small()
  stack = np.stack([hu, hu[::-1]])
  both = scorer.score(stack, pixel_mm=pixel_mm)
  single = scorer.score(hu[::-1], pixel_mm=(pixel_mm, pixel_mm))
  assert both.scores.shape == (2,)
  assert abs(both.scores[1] - single.scores[0]) < 1e-6
  assumed = scorer.score(hu)
  assert 'assumed' in assumed.notes[0][0]
  fine = scorer.score(hu, pixel_mm=0.2)
  assert any('resampled from 0.2 mm' in note for note in fine.notes[0])
  low = scorer.pixel_mm_range[0]
  assert fine.pixel_mm[0][0] == pytest.approx(low, rel=0.02)
  assert fine.heatmaps[0].shape == (round(128 * 0.2 / low),) * 2


@pytest.mark.parametrize('bad,message', [
    (np.zeros(100), 'shape'),
    (np.zeros((2, 2, 64, 64)), 'shape'),
    (np.zeros((0, 64, 64)), 'shape'),
    (np.full((16, 16), -1000.0), 'too small'),
    (np.array([['a'] * 64] * 64), 'dtype'),
    (np.ones((64, 64), complex), 'real'),
    (np.random.default_rng(0).random((64, 64)), 'windowed or normalised'),
    (np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8),
     'windowed or normalised'),
])
def test_score_rejects_what_cannot_be_hu(scorer, bad, message):
  with pytest.raises(scorer_lib.ScorerInputError, match=message):
    scorer.score(bad, pixel_mm=0.7)


def test_score_warns_about_stored_values_without_the_intercept(scorer):
  hu, pixel_mm = _ct_small()
  with pytest.warns(scorer_lib.SuspiciousHUWarning, match='RescaleIntercept'):
    stored = scorer.score(hu + 1024.0, pixel_mm=pixel_mm)
  assert stored.scores.shape == (1,)


def test_score_names_the_first_nan(scorer):
  hu, _ = _ct_small()
  hu = hu.copy()
  hu[5, 7] = np.nan
  with pytest.raises(scorer_lib.ScorerInputError, match='row 5, column 7'):
    scorer.score(hu, pixel_mm=0.7)


@pytest.mark.parametrize('spacing', [0.0, -1.0, float('nan'), (0.5, 0.6, 0.7), 'x'])
def test_score_rejects_bad_spacings(scorer, spacing):
  hu, _ = _ct_small()
  with pytest.raises((scorer_lib.ScorerInputError, ValueError), match='pixel_mm'):
    scorer.score(hu, pixel_mm=spacing)


def test_compare_pairs_files_by_relative_path(scorer, tmp_path):
  hu, _ = _ct_small()
  rng = np.random.default_rng(1)
  noisy_dir, smooth_dir = tmp_path / 'noisy', tmp_path / 'denoised'
  for folder in (noisy_dir / 'sub', smooth_dir / 'sub'):
    folder.mkdir(parents=True)
  names = ['a.npy', os.path.join('sub', 'b.npy')]
  for index, name in enumerate(names):
    noisy = (hu + rng.normal(0, 60, hu.shape)).astype(np.int16)
    np.save(noisy_dir / name, noisy)
    np.save(smooth_dir / name, ndimage.gaussian_filter(noisy.astype(np.float32), 1.0)
            .astype(np.int16))
  np.save(noisy_dir / 'only_here.npy', hu.astype(np.int16))
  score_paths = lambda paths: paths_lib.predict_paths(scorer.config, scorer.params, paths)
  result = compare.compare_folders(str(noisy_dir), str(smooth_dir), score_paths)
  assert [row['file'] for row in result.rows] == sorted(names)
  assert result.only_before == ['only_here.npy'] and result.only_after == []
  for row in result.rows:
    before = score_paths([str(noisy_dir / row['file'])])[0][0]['score']
    after = score_paths([str(smooth_dir / row['file'])])[0][0]['score']
    assert row['change'] == pytest.approx(after - before, abs=1e-6)
  changes = [row['change'] for row in result.rows]
  assert result.summary['mean_change'] == pytest.approx(sum(changes) / 2)
  assert result.summary['fraction_improved'] == sum(c > 0 for c in changes) / 2
  figure = tmp_path / 'change.png'
  compare.plot(result, str(figure), 'noisy', 'denoised')
  assert figure.stat().st_size > 1000


def test_compare_needs_shared_files(scorer, tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  hu, _ = _ct_small()
  np.save(tmp_path / 'a' / 'x.npy', hu.astype(np.int16))
  np.save(tmp_path / 'b' / 'y.npy', hu.astype(np.int16))
  score_paths = lambda paths: paths_lib.predict_paths(scorer.config, scorer.params, paths)
  with pytest.raises(ValueError, match='same relative path'):
    compare.compare_folders(str(tmp_path / 'a'), str(tmp_path / 'b'), score_paths)
  with pytest.raises(ValueError, match='not a folder'):
    compare.compare_folders(str(tmp_path / 'missing'), str(tmp_path / 'b'), score_paths)
