"""Evaluation: split predictions (the predict path), report files, the command."""
import csv
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tifffile

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import evaluate
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax import models
from mdiqa_jax import predict
from mdiqa_jax import train_step
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import preprocess

from child_process import child_env
import tiny_train_config


@pytest.fixture(scope='module')
def config(tiny_data_dir):
  config = tiny_train_config.get_config(tiny_data_dir)
  config.eval_batch_size = 3  # 8 test slices: the last batch is padded.
  return config


@pytest.fixture(scope='module')
def params(config):
  model = models.create_model(config)
  return jax.jit(train_step.init_params, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), config.data.image_size)


def test_predict_split_scores_each_slice_as_predict_scores_its_file(config, params, tmp_path):
  predictions = evaluate.predict_split(config, params, 'test')
  source = pipeline.open_source(config.data, 'test')
  assert predictions['index'].tolist() == list(range(len(source)))
  assert predictions['log_probs'].shape == (len(source), 3, 21)
  for i in range(len(source)):
    example = source[i]
    path = str(tmp_path / f'{i}.tif')
    tifffile.imwrite(path, preprocess.as_slice(example['image']))
    (row,), _ = predict.predict_paths(config, params, [path],
                                      pixel_mm=pipeline.example_pixel_mm(example, config.data)[0])
    assert predictions['label'][i] == pytest.approx(example['score'])
    assert predictions['score'][i] == pytest.approx(row['score'], abs=1e-6)
    assert predictions['uncertainty'][i] == pytest.approx(row['uncertainty'], abs=1e-6)
    np.testing.assert_allclose(predictions['scale_scores'][i],
                               [row[f'scale_score_{k}'] for k in range(3)], atol=1e-6)


def _predictions():
  rng = np.random.default_rng(1)
  label = rng.uniform(0, 4, 12)
  return {'index': np.arange(12, dtype=np.int32), 'label': label,
          'score': label + rng.normal(0, 0.3, 12), 'uncertainty': rng.uniform(0.1, 0.5, 12),
          'scale_scores': rng.uniform(0, 4, (12, 3))}


def test_write_report_writes_metrics_predictions_and_a_scatter_plot(tmp_path):
  predictions = _predictions()
  metrics = evaluate.compute_metrics(predictions)
  evaluate.write_report(predictions, metrics, str(tmp_path), split='test', checkpoint='ckpt/5')
  summary = json.loads((tmp_path / 'metrics.json').read_text())
  assert summary['num_examples'] == 12 and summary['split'] == 'test'
  assert summary['checkpoint'] == 'ckpt/5'
  for name in ('plcc', 'srocc', 'krocc', 'overall'):
    assert summary[name] == pytest.approx(metrics[name])
  with open(tmp_path / 'predictions.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 12
  for key in ('label', 'score', 'uncertainty'):
    np.testing.assert_allclose([float(row[key]) for row in rows], predictions[key], atol=1e-6)
  np.testing.assert_allclose([float(row['scale_score_2']) for row in rows],
                             predictions['scale_scores'][:, 2], atol=1e-6)
  with Image.open(tmp_path / 'scatter.png') as image:
    assert image.size[0] > 300 and image.size[1] > 300


def test_evaluate_command_reports_the_workdir_checkpoint(tmp_path, config, params):
  workdir = tmp_path / 'run'
  checkpointing.save_config(config, str(workdir))
  manager = checkpointing.create_manager(str(workdir), keep_last=1, keep_best=0)
  checkpointing.save(manager, 4, train_step.TrainState(
      step=jnp.int32(4), params=params, opt_state={}, ema_params=None,
      rng=jax.random.PRNGKey(0)))
  manager.wait_until_finished()
  manager.close()
  env = child_env()
  completed = subprocess.run(
      [sys.executable, '-m', 'mdiqa_jax.evaluate', f'--workdir={workdir}', '--split=test',
       ], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  report_dir = workdir / 'eval_test'
  summary = json.loads((report_dir / 'metrics.json').read_text())
  assert summary['checkpoint'] == str(workdir / 'checkpoints' / '4')
  with open(report_dir / 'predictions.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8
  recomputed = metrics_lib.all_metrics([float(r['score']) for r in rows],
                                       [float(r['label']) for r in rows])
  for name, value in recomputed.items():
    assert summary[name] == pytest.approx(value, abs=1e-5)
  assert f'test: PLCC {summary["plcc"]:.4f}' in completed.stdout


def test_write_report_is_one_set_a_failed_write_leaves_the_previous_report(tmp_path):
  first = _predictions()
  evaluate.write_report(first, evaluate.compute_metrics(first), str(tmp_path), split='test',
                        checkpoint='ckpt/5')
  before = {name: (tmp_path / name).read_bytes() for name in ('metrics.json', 'predictions.csv')}
  # A name the file system refuses for the last file of the next report.
  (tmp_path / 'scatter.png').unlink()
  (tmp_path / 'scatter.png').mkdir()
  second = dict(first, score=first['score'][::-1].copy())
  with pytest.raises(OSError):
    evaluate.write_report(second, evaluate.compute_metrics(second), str(tmp_path),
                          split='test', checkpoint='ckpt/9')
  assert {name: (tmp_path / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(tmp_path)) == ['metrics.json', 'predictions.csv', 'scatter.png']


@pytest.mark.parametrize('make_path,words', [
    (lambda tmp: tmp / 'no_such_run', 'neither a training workdir'),
    (lambda tmp: tmp / 'run' / 'checkpoints' / '7', 'cannot read the run config'),
])
def test_evaluate_command_errors_are_one_line(tmp_path, capsys, make_path, words):
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  path = str(make_path(tmp_path))
  main = command_errors.guard(functools.partial(evaluate.main, values={
      'workdir': path, 'checkpoint': None, 'split': 'test', 'output_dir': None}),
      'mdiqa-evaluate')
  assert main(['mdiqa-evaluate']) == command_errors.EXIT_ERROR
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith('mdiqa-evaluate: error: ') and words in line, line
