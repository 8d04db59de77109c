"""The sweep runner: one real tiny run, resuming, duplicates, failures, and the report."""
import csv
import json
import os

import numpy as np
import pytest

from mdiqa_jax import sweep

from child_process import REPO_DIR, TESTS_DIR

ROW_CONFIG = f'''"""Tiny row {{name}}."""
import sys
sys.path.insert(0, {TESTS_DIR!r})
import tiny_train_config


def get_config(arg=None):
  config = tiny_train_config.get_config(arg)
  config.async_checkpointing = False
  {{change}}
  return config
'''


def _write_row(directory, name, change='pass'):
  path = os.path.join(directory, f'{name}.py')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(ROW_CONFIG.format(name=name, change=change))
  return path


def _mtimes(directory):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


def test_sweep_runs_each_pair_once_reuses_duplicates_records_failures_and_resumes(
    tmp_path, monkeypatch, tiny_data_dir):
  monkeypatch.setenv('PYTHONPATH', REPO_DIR)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  data_dir = tiny_data_dir
  rows = tmp_path / 'rows'
  rows.mkdir()
  _write_row(rows, 'a')
  _write_row(rows, 'b')  # The same config as a: reuses a's run.
  _write_row(rows, 'c', change="config.model.head.name = 'no_such_head'")  # Fails.
  workdir, report = str(tmp_path / 'sweep'), str(tmp_path / 'docs' / 'RESULTS.md')
  overrides = [f'data.data_dir={data_dir}', 'num_train_steps=2']
  results = sweep.run_sweep([str(rows / '*.py')], [0], workdir, report,
                            overrides=overrides, command='the command')

  assert [r['name'] for r in results] == ['rows/a', 'rows/b']
  run_a = os.path.join(workdir, 'rows', 'a', 'seed_0')
  with open(os.path.join(run_a, 'eval_test', 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  assert results[0]['test'] == metrics
  assert f'--config.data.data_dir={data_dir}' in results[0]['command']
  assert '--config.num_train_steps=2' in results[0]['command']
  assert results[1]['same_as'] == run_a and results[1]['test'] == metrics
  assert not os.path.exists(os.path.join(workdir, 'rows', 'b', 'seed_0', 'checkpoints'))
  failed = os.path.join(workdir, 'rows', 'c', 'seed_0')
  assert os.path.exists(os.path.join(failed, sweep.FAILED_FILE))
  assert 'no_such_head' in open(os.path.join(failed, 'run.log'), encoding='utf-8').read()
  text = open(report, encoding='utf-8').read()
  overall = f'{metrics["overall"]:.4f} ± 0.0000'
  assert '| `rows/a` | Tiny row a. | 1 |' in text and overall in text
  assert 'Not run (or failed): `rows/c` seed 0.' in text
  assert os.path.exists(os.path.join(tmp_path, 'docs', 'images', 'results_rows_bars.png'))

  # Rerun without the failing row: nothing is trained again.
  os.remove(rows / 'c.py')
  before = _mtimes(os.path.join(workdir, 'rows', 'a'))
  again = sweep.run_sweep([str(rows / '*.py')], [0], workdir, report, overrides=overrides,
                          command='the command')
  assert [r['test'] for r in again] == [metrics, metrics]
  assert _mtimes(os.path.join(workdir, 'rows', 'a')) == before
  # --report_only reports the command that made the runs.
  sweep.run_sweep([str(rows / '*.py')], [0], workdir, report, overrides=overrides,
                  report_only=True, command='the report command')
  assert '```\nthe command\n```' in open(report, encoding='utf-8').read()


def _fake_run(directory, name, seed, overall, rng, head='distribution'):
  """A finished run's result (as the sweep records it) with a predictions.csv."""
  labels = rng.uniform(0, 4, 40)
  std = rng.uniform(0.1, 0.6, 40) if head == 'distribution' else np.zeros(40)
  scores = labels + rng.normal(size=40) * (std if head == 'distribution' else 0.3)
  path = os.path.join(directory, f'{name.replace("/", "_")}_{seed}.csv')
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['index', 'label', 'score', 'uncertainty'])
    for i in range(40):
      writer.writerow([i, labels[i], scores[i], std[i]])
  test = {'plcc': overall / 3 + 0.01, 'srocc': overall / 3, 'krocc': overall / 3 - 0.01,
          'overall': overall}
  return {'name': name, 'seed': seed, 'test': test, 'predictions': path,
          'wall_seconds': 60.0 + seed, 'command': f'python -m mdiqa_jax.train {name}',
          'uncertainty': sweep.uncertainty_check(sweep.read_predictions(path))}


def test_report_rows_are_mean_and_std_over_seeds_with_claims_and_plots(tmp_path):
  rng = np.random.default_rng(0)
  overall = {'ablations/full': [2.5, 2.6, 2.7], 'ablations/vit_only': [2.0, 2.1, 2.2],
             'ablations/point_l1': [2.4, 2.6, 2.5]}
  results = [_fake_run(str(tmp_path), name, seed, value, rng,
                       head='point' if name.endswith('point_l1') else 'distribution')
             for name, values in overall.items() for seed, value in enumerate(values)]
  plans = [{'name': name, 'seed': seed, 'description': f'{name} row'}
           for name in overall for seed in range(3)]
  report = str(tmp_path / 'RESULTS.md')
  sweep.write_report(results, plans, report, command='python -m mdiqa_jax.sweep ...',
                     notes='Hand-written notes.')
  text = open(report, encoding='utf-8').read()
  for name, values in overall.items():
    mean, std = np.mean(values), np.std(values, ddof=1)
    plcc = np.array(values) / 3 + 0.01
    assert (f'| `{name}` | {name} row | 3 | {np.mean(plcc):.4f} ± {np.std(plcc, ddof=1):.4f}'
            in text)
    assert f'{mean:.4f} ± {std:.4f} | 61 |' in text
  # full vs vit_only: +0.5 with SE sqrt(2 * 0.01 / 3) = 0.0816: holds.
  assert ('| Both branches beat the ViT alone | `ablations/full` vs `ablations/vit_only` | '
          '+0.5000 | 0.0816 | holds |') in text
  assert ('`ablations/full` vs `ablations/point_l1` | +0.1000 | 0.0816 | within noise '
          '(same direction) |') in text
  assert 'Hand-written notes.' in text
  # The point-regression rows predict no std: not in the uncertainty table.
  uncertainty_table = text.split('## Uncertainty check')[1].split('##')[0]
  assert '`ablations/full`' in uncertainty_table
  assert 'point_l1' not in uncertainty_table
  for image in ('results_ablations_bars.png', 'results_best_scatter.png',
                'results_calibration.png'):
    assert os.path.getsize(tmp_path / 'images' / image) > 1000
  assert '(images/results_calibration.png)' in text


def test_uncertainty_check_matches_rank_correlation_by_hand():
  rng = np.random.default_rng(1)
  labels = rng.uniform(0, 4, 50)
  std = rng.uniform(0.1, 1.0, 50)
  scores = labels + rng.normal(size=50) * std
  check = sweep.uncertainty_check({'label': labels, 'score': scores, 'uncertainty': std})
  error = np.abs(scores - labels)
  ranks_error, ranks_std = np.argsort(np.argsort(error)), np.argsort(np.argsort(std))
  assert check['spearman'] == pytest.approx(np.corrcoef(ranks_error, ranks_std)[0, 1])
  assert check['pearson'] == pytest.approx(np.corrcoef(error, std)[0, 1])
  assert check['within_1_std'] == np.mean(error <= std)
  assert check['within_2_std'] == np.mean(error <= 2 * std)
  assert check['spearman'] > 0.3  # The errors were drawn with these stds.
  assert sweep.uncertainty_check({'label': labels, 'score': scores,
                                  'uncertainty': np.zeros(50)}) is None
  bins = sweep.calibration_bins({'label': labels, 'score': scores, 'uncertainty': std}, 5)
  assert [count for _, _, count in bins] == [10] * 5
  order = np.argsort(std)
  assert bins[0][1] == pytest.approx(np.sqrt(np.mean((scores - labels)[order[:10]] ** 2)))


@pytest.mark.parametrize('better,worse,verdict', [
    ([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], 'holds'),
    ([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], 'reversed'),
    ([2.0, 2.5, 1.5], [1.9, 2.4, 1.4], 'within noise (same direction)'),
    ([2.0], [1.0, 1.1], 'no verdict (one seed)')])
def test_compare_verdicts(better, worse, verdict):
  assert sweep.compare(better, worse)['verdict'] == verdict


def test_bad_arguments_name_what_was_expected(tmp_path):
  with pytest.raises(ValueError, match='matches no file'):
    sweep.expand_config_patterns([str(tmp_path / '*.py')])
  with pytest.raises(ValueError, match='FIELD=VALUE'):
    sweep.parse_override('num_train_steps')
  assert sweep.parse_override('optim.learning_rate=3e-4') == ('optim.learning_rate', 3e-4)
  assert sweep.parse_override('data.name=ldct_iqa_synthetic/clinical') == (
      'data.name', 'ldct_iqa_synthetic/clinical')
  path = _write_row(str(tmp_path), 'a')
  with pytest.raises(ValueError, match='no field'):
    sweep.load_config(path, 0, ['optim.no_such_field=1'])
