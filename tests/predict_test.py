"""mdiqa-predict: scores against the model on hand-made inputs, formats, bad inputs, CLI."""
import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from PIL import Image

from mdiqa_jax import models
from mdiqa_jax import predict

import reference_pooling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _phantom_hu(shape=(120, 100), seed=0):
  """Integer HU: a soft-tissue ellipse with noise, in air (a CT-like slice)."""
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  inside = (((rows - shape[0] / 2) / (0.4 * shape[0])) ** 2 +
            ((cols - shape[1] / 2) / (0.4 * shape[1])) ** 2) < 1
  noise = np.random.default_rng(seed).normal(0.0, 40.0, shape)
  return np.round(np.where(inside, 50.0 + noise, -1000.0)).astype(np.int16)


def _window(hu):
  """The soft-tissue window written out: width 350, level 40 -> [-135, 215] HU."""
  return np.clip((hu.astype(np.float64) + 135.0) / 350.0, 0.0, 1.0).astype(np.float32)


def _reference_outputs(checkpoint, views):
  """The model applied to (n, S, S, 1) views directly, outside predict."""
  model = models.create_model(checkpoint.config)
  apply = jax.jit(lambda params, images: model.apply({'params': params}, images))
  return jax.device_get(apply(checkpoint.params, jnp.asarray(views)))


def _predict_rows(checkpoint, paths, **kwargs):
  return predict.predict_paths(checkpoint.config, checkpoint.params, paths, **kwargs)


def test_score_pools_the_model_over_native_tiles_by_weight_and_body(tiny_checkpoint, tmp_path):
  hu = _phantom_hu((120, 100))
  np.save(tmp_path / 'slice.npy', hu)
  (row,), failures = _predict_rows(tiny_checkpoint, [str(tmp_path / 'slice.npy')])
  assert not failures
  # 64-pixel tiles at rows {0, 56} x columns {0, 36}: native pixels, no resizing.
  unit = _window(hu)
  body = reference_pooling.body_mask(unit)
  origins = [(0, 0), (0, 36), (56, 0), (56, 36)]
  tiles = np.stack([unit[t:t + 64, l:l + 64] for t, l in origins])[..., None]
  outputs = _reference_outputs(tiny_checkpoint, tiles)
  fractions = np.stack([reference_pooling.patch_body(body, t, l, 4, 16) for t, l in origins])
  score, probs = reference_pooling.pool(outputs['patch_weights'], fractions,
                                        outputs['patch_log_probs'], np.arange(21) * 0.2)
  assert row['score'] == pytest.approx(score, abs=1e-4)
  for k in range(3):
    assert row[f'scale_score_{k}'] == pytest.approx(probs[k] @ (np.arange(21) * 0.2), abs=1e-4)
  assert row['uncertainty'] > 0 and row['num_tiles'] == 4 and row['pixel_mm'] == '0.75'
  assert (row['file'], row['slice'], row['height'], row['width'], row['intensity']) == (
      str(tmp_path / 'slice.npy'), 0, 120, 100, 'hu')
  assert "assumed 0.75 mm (the training data's spacing)" in row['note']


def _disk_hu(size_mm, pixel_mm, seed):
  """The same anatomy (a 70 mm soft-tissue disk with a 20 mm bright insert) at a spacing."""
  count = int(round(size_mm / pixel_mm))
  centres = (np.arange(count) - (count - 1) / 2) * pixel_mm
  y, x = np.meshgrid(centres, centres, indexing='ij')
  hu = np.where(x**2 + y**2 < 35.0**2, 40.0, -1000.0)
  hu = np.where((x - 12.0)**2 + y**2 < 10.0**2, 150.0, hu)
  noise = np.random.default_rng(seed).normal(0.0, 15.0, hu.shape)
  return np.round(hu + np.where(hu > -500, noise, 0.0)).astype(np.int16)


def test_dicom_spacing_goes_through_the_spacing_rule(tiny_checkpoint, tmp_path, write_ct_dicom):
  """The model was trained on 0.4-0.95 mm (config.data.pixel_mm_range)."""
  paths = {}
  for pixel_mm in (0.3, 0.5, 0.8, 1.2):
    hu = _disk_hu(80.0, pixel_mm, seed=int(pixel_mm * 10))
    paths[pixel_mm] = write_ct_dicom(str(tmp_path / f'at_{pixel_mm}.dcm'), hu, slope=1.0,
                                     intercept=0.0, PixelSpacing=[pixel_mm, pixel_mm])
  np.save(tmp_path / 'plain.npy', _disk_hu(80.0, 0.3, seed=9))
  rows, failures = _predict_rows(tiny_checkpoint, list(paths.values()) +
                                 [str(tmp_path / 'plain.npy')])
  assert not failures
  by_name = {os.path.basename(r['file']): r for r in rows}
  # 0.5 and 0.8 mm lie in the range: scored at their own pixels, no note.
  for name, pixel_mm, side in (('at_0.5.dcm', '0.5', 160), ('at_0.8.dcm', '0.8', 100)):
    inside = by_name[name]
    assert (inside['pixel_mm'], inside['note'], inside['height']) == (pixel_mm, '', side)
  # The same anatomy at both spacings scores alike (the tiny model is untrained:
  # a loose bound, but a model that saw pixels instead of mm would not meet it).
  assert by_name['at_0.5.dcm']['score'] == pytest.approx(by_name['at_0.8.dcm']['score'],
                                                         abs=0.5)
  # 0.3 mm is finer than the range: shrunk to 0.4 mm (267 -> 200 pixels), said so.
  fine = by_name['at_0.3.dcm']
  assert float(fine['pixel_mm']) == pytest.approx(0.4, rel=0.01)
  assert 'resampled from 0.3 mm to 0.4 mm pixels (the model was trained on 0.4-0.95 mm)' in (
      fine['note'])
  # 1.2 mm is coarser: enlarged to 0.95 mm.
  coarse = by_name['at_1.2.dcm']
  assert float(coarse['pixel_mm']) == pytest.approx(0.95, rel=0.01)
  assert 'resampled from 1.2 mm' in coarse['note']
  # A file without spacing takes the training data's, or --pixel_mm, and says so.
  plain = by_name['plain.npy']
  assert plain['pixel_mm'] == '0.75' and 'assumed 0.75 mm' in plain['note']
  (flagged,), _ = _predict_rows(tiny_checkpoint, [str(tmp_path / 'plain.npy')], pixel_mm=0.3)
  assert 'assumed 0.3 mm (--pixel_mm)' in flagged['note'] and 'resampled from 0.3 mm' in (
      flagged['note'])
  assert flagged['score'] == pytest.approx(fine['score'], abs=0.1)


def test_same_slice_as_dicom_tiff_npy_and_png_gives_the_same_score(
    tiny_checkpoint, tmp_path, write_ct_dicom):
  hu = _phantom_hu((128, 128), seed=2)
  # DICOM stores (HU + 1024) * 2 with slope 0.5 and intercept -1024.
  write_ct_dicom(str(tmp_path / 'slice.dcm'), ((hu.astype(np.int32) + 1024) * 2).astype(np.uint16),
                 slope=0.5, intercept=-1024.0)
  tifffile.imwrite(tmp_path / 'hu.tif', hu.astype(np.float32))
  tifffile.imwrite(tmp_path / 'windowed.tif', _window(hu))
  np.save(tmp_path / 'hu.npy', hu)
  Image.fromarray(np.round(_window(hu) * 65535).astype(np.uint16)).save(tmp_path / 'w16.png')
  names = ['slice.dcm', 'hu.tif', 'windowed.tif', 'hu.npy', 'w16.png']
  rows, failures = _predict_rows(tiny_checkpoint, [str(tmp_path / n) for n in names])
  assert not failures
  scores = {os.path.basename(r['file']): np.array(
      [r['score'], r['uncertainty']] + [r[f'scale_score_{k}'] for k in range(3)]) for r in rows}
  for name in ['hu.tif', 'windowed.tif', 'hu.npy']:
    np.testing.assert_allclose(scores[name], scores['slice.dcm'], rtol=0, atol=1e-4)
  # A 16-bit PNG quantises the window to steps of 1/65535, and says what it assumed.
  np.testing.assert_allclose(scores['w16.png'], scores['slice.dcm'], rtol=0, atol=1e-3)
  notes = {os.path.basename(r['file']): r['note'] for r in rows}
  assert 'no HU information' in notes['w16.png']
  assert 'no pixel spacing' in notes['hu.npy'] and notes['slice.dcm'].startswith('no pixel')


def test_batch_size_does_not_change_scores(tiny_checkpoint, tmp_path):
  stack = np.stack([_phantom_hu((130, 150), seed=s) for s in range(5)])
  np.save(tmp_path / 'stack.npy', stack)
  by_batch = {}
  for batch_size in (1, 7, 8):
    rows, _ = _predict_rows(tiny_checkpoint, [str(tmp_path / 'stack.npy')],
                            batch_size=batch_size)
    assert [r['slice'] for r in rows] == [0, 1, 2, 3, 4]
    by_batch[batch_size] = np.array([r['score'] for r in rows])
  np.testing.assert_allclose(by_batch[1], by_batch[8], atol=1e-5)
  np.testing.assert_allclose(by_batch[7], by_batch[8], atol=1e-5)
  assert np.ptp(by_batch[8]) > 0  # The slices differ, and so do their scores.


def _options(checkpoint, inputs, **kwargs):
  return predict.Options(checkpoint=checkpoint, inputs=[str(p) for p in inputs],
                         progress=False, **kwargs)


def _read_csv(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def test_command_scores_a_folder_reports_bad_files_and_exits_2(
    tiny_checkpoint, tmp_path, capsys, write_ct_dicom, write_dicom_without_pixels):
  scans = tmp_path / 'scans'
  (scans / 'series').mkdir(parents=True)
  for z in (10.0, 0.0, 5.0):
    write_ct_dicom(str(scans / 'series' / f'IM{int(z):03d}'), _phantom_hu((96, 96)).astype(
        np.int16), slope=1.0, intercept=0.0, z_mm=z)
  np.save(scans / 'stack.npy', np.stack([_phantom_hu((70, 70), seed=s) for s in range(2)]))
  write_dicom_without_pixels(str(scans / 'report.dcm'))
  np.save(scans / 'nan.npy', np.full((64, 64), np.nan, np.float32))
  output = tmp_path / 'scores.csv'
  status = predict.predict_command(_options(tiny_checkpoint.workdir, [scans],
                                            output=str(output)))
  assert status == predict.EXIT_SOME_FAILED
  rows = _read_csv(output)
  scored = [r for r in rows if not r['error']]
  assert [(os.path.basename(r['file']), r['slice'], r['z_mm']) for r in scored] == [
      ('IM000', '0', '0.000000'), ('IM005', '0', '5.000000'), ('IM010', '0', '10.000000'),
      ('stack.npy', '0', ''), ('stack.npy', '1', '')]
  for row in scored:
    assert 0.0 <= float(row['score']) <= 4.0 and float(row['uncertainty']) > 0.0
    assert {'scale_score_0', 'scale_score_1', 'scale_score_2'} <= set(row)
  failed = {os.path.basename(r['file']): r['error'] for r in rows if r['error']}
  assert set(failed) == {'report.dcm', 'nan.npy'}
  assert 'without pixel data' in failed['report.dcm'] and 'NaN/inf' in failed['nan.npy']
  stderr = capsys.readouterr().err
  assert f'failed: {scans / "nan.npy"}: ' in stderr and 'scored 5 slices; 2 files failed' in stderr


def test_command_never_overwrites_without_overwrite_and_writes_json(tiny_checkpoint, tmp_path,
                                                                     capsys):
  np.save(tmp_path / 'a.npy', _phantom_hu((64, 64)))
  output = tmp_path / 'out.json'
  output.write_text('precious')
  options = _options(tiny_checkpoint.step_dir, [tmp_path / 'a.npy'], output=str(output))
  assert predict.predict_command(options) == predict.EXIT_FATAL
  assert output.read_text() == 'precious'
  assert f'{output}: already exists; pass --overwrite' in capsys.readouterr().err
  options = _options(tiny_checkpoint.step_dir, [tmp_path / 'a.npy'], output=str(output),
                     overwrite=True)
  assert predict.predict_command(options) == 0
  result = json.loads(output.read_text())
  assert [s['file'] for s in result['slices']] == [str(tmp_path / 'a.npy')]
  assert result['failures'] == []
  assert result['settings']['tile_size'] == 64 and result['settings']['window_width'] == 350
  assert result['settings']['pixel_mm_range'] == [0.4, 0.95]
  assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]  # No temporary left.


def test_missing_or_incompatible_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
  np.save(tmp_path / 'a.npy', _phantom_hu((64, 64)))
  missing = str(tmp_path / 'no_such_run')
  assert predict.predict_command(_options(missing, [tmp_path / 'a.npy'])) == predict.EXIT_FATAL
  assert f'{missing}: no such checkpoint directory.' in capsys.readouterr().err
  with pytest.raises(predict.CheckpointError, match=f'^{tmp_path}: cannot load'):
    predict.load_checkpoint(str(tmp_path))  # A folder, but not a workdir.
  # The same checkpoint with a config describing a wider head.
  incompatible = tmp_path / 'incompatible'
  incompatible.mkdir()
  os.symlink(os.path.join(tiny_checkpoint.workdir, 'checkpoints'), incompatible / 'checkpoints')
  config = json.loads(open(os.path.join(tiny_checkpoint.workdir, 'config.json')).read())
  config['model']['head']['hidden'] = 24
  (incompatible / 'config.json').write_text(json.dumps(config))
  with pytest.raises(predict.CheckpointError,
                     match=f'^{incompatible}: cannot load.*shape mismatches.*head/'):
    predict.load_checkpoint(str(incompatible))


def test_heatmaps_one_png_per_slice_and_no_overwrite(tiny_checkpoint, tmp_path):
  np.save(tmp_path / 'stack.npy', np.stack([_phantom_hu((72, 64), seed=s) for s in range(2)]))
  heatmaps = tmp_path / 'heatmaps'
  options = _options(tiny_checkpoint.workdir, [tmp_path / 'stack.npy'], heatmap=str(heatmaps),
                     output=str(tmp_path / 'out.csv'))
  assert predict.predict_command(options) == 0
  assert sorted(os.listdir(heatmaps)) == ['stack.npy_slice0000.png', 'stack.npy_slice0001.png']
  with Image.open(heatmaps / 'stack.npy_slice0001.png') as image:
    assert image.size[0] > 300 and image.size[1] > 100
  # The maps cover the whole slice: every body pixel has a patch score.
  maps = []
  predict.predict_paths(tiny_checkpoint.config, tiny_checkpoint.params,
                        [str(tmp_path / 'stack.npy')],
                        on_prediction=lambda key, prediction: maps.append(prediction))
  for prediction in maps:
    assert prediction['score_map'].shape == prediction['image'].shape == (72, 64)
    body = reference_pooling.body_mask(prediction['image'])
    assert np.isfinite(prediction['score_map'][body]).all()
    assert prediction['weight_map'].sum() == pytest.approx(1.0, abs=1e-4)
  again = _options(tiny_checkpoint.workdir, [tmp_path / 'stack.npy'], heatmap=str(heatmaps),
                   output=str(tmp_path / 'other.csv'))
  assert predict.predict_command(again) == predict.EXIT_FATAL


def test_python_dash_m_command_line(tiny_checkpoint, tmp_path):
  np.save(tmp_path / 'a.npy', _phantom_hu((64, 64)))
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG not really')
  output = tmp_path / 'out.csv'
  result = subprocess.run(
      [sys.executable, '-m', 'mdiqa_jax.predict', '--checkpoint', tiny_checkpoint.workdir,
       '--output', str(output), '--batch_size=2', '--noprogress', str(tmp_path / 'a.npy'),
       str(tmp_path / 'broken.png')],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])))
  assert result.returncode == predict.EXIT_SOME_FAILED, result.stderr
  rows = _read_csv(output)
  assert [os.path.basename(r['file']) for r in rows] == ['a.npy', 'broken.png']
  assert rows[0]['error'] == '' and 0.0 <= float(rows[0]['score']) <= 4.0
  assert 'cannot read as a PNG' in rows[1]['error']
  assert f'{tmp_path / "broken.png"}: cannot read as a PNG' in result.stderr


def test_heatmap_names_are_unique_and_name_their_file_and_slice(tiny_checkpoint, tmp_path):
  scans = tmp_path / 'scans'
  (scans / 'a').mkdir(parents=True)
  for path in ('x.npy', 'a/x.npy', 'a__x.npy'):
    np.save(scans / path, _phantom_hu((64, 64), seed=len(path)))
  tifffile.imwrite(scans / 'x.tif', _phantom_hu((64, 64), seed=9))
  heatmaps = tmp_path / 'heatmaps'
  status = predict.predict_command(_options(tiny_checkpoint.workdir, [scans],
                                            heatmap=str(heatmaps),
                                            output=str(tmp_path / 'out.csv')))
  assert status == 0
  names = sorted(os.listdir(heatmaps))
  assert len(names) == 4
  sources = {predict.heatmap_source(name, str(scans)) for name in names}
  assert sources == {(str(scans / path), 0) for path in ('x.npy', 'a/x.npy', 'a__x.npy',
                                                         'x.tif')}


def test_a_heatmap_that_cannot_be_written_is_an_error_row_and_the_scores_are_kept(
    tiny_checkpoint, tmp_path, capsys):
  np.save(tmp_path / 'stack.npy', np.stack([_phantom_hu((64, 64), seed=s) for s in range(2)]))
  heatmaps = tmp_path / 'heatmaps'
  # A folder where the second slice's heatmap must go: the file system refuses it.
  (heatmaps / predict.heatmap_name(str(tmp_path / 'stack.npy'), 1, str(tmp_path))).mkdir(
      parents=True)
  output = tmp_path / 'out.csv'
  status = predict.predict_command(_options(tiny_checkpoint.workdir, [tmp_path / 'stack.npy'],
                                            heatmap=str(heatmaps), output=str(output),
                                            overwrite=True))
  assert status == predict.EXIT_SOME_FAILED
  rows = _read_csv(output)
  assert [(r['slice'], bool(r['error'])) for r in rows] == [('0', False), ('1', False),
                                                            ('', True)]
  assert 'slice 1: scored, but its heatmap' in rows[2]['error']
  assert 'Traceback' not in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_status_1(tiny_checkpoint, tmp_path,
                                                                     capsys):
  np.save(tmp_path / 'a.npy', _phantom_hu((64, 64)))
  (tmp_path / 'out.csv').mkdir()  # --overwrite, but a folder cannot be replaced by a file.
  status = predict.predict_command(_options(tiny_checkpoint.workdir, [tmp_path / 'a.npy'],
                                            output=str(tmp_path / 'out.csv'), overwrite=True))
  assert status == predict.EXIT_FATAL
  (line,) = [l for l in capsys.readouterr().err.splitlines() if 'error' in l]
  assert line.startswith(f'mdiqa-predict: error: {tmp_path / "out.csv"}: cannot write it: ')
