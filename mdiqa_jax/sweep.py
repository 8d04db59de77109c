r"""Runs a list of configs over seeds and writes the results report.

  python -m mdiqa_jax.sweep --configs='configs/ablations/*.py,configs/semi/*.py' \
      --seeds=0,1,2 --workdir=runs/sweep --results=docs/RESULTS.md \
      [--set=num_train_steps=150 --set=data.data_dir=/data/tfds ...] \
      [--notes=docs/results_notes.md] [--report_only]

Every (config, seed) pair is one run (all configs of the first seed, then of
the next, ...) with its own workdir
<workdir>/<group>/<name>/seed_<seed> (group = the config's folder), started as
its own command -- `python -m mdiqa_jax.train` for plain configs,
`python -m mdiqa_jax.semi` for configs with a `semi` field -- with
--config.seed=<seed> and every --set as --config.<field>=<value>; its output
goes to run.log there. A run is finished once the sweep wrote its
sweep_result.json; rerunning the sweep skips finished runs and resumes the
others (the commands resume from their checkpoints). A run whose resolved
config equals a finished run's (configs/semi/none.py and
configs/ablations/full.py) reuses that run's result. Semi-supervised configs
with the same teacher settings share one teacher ensemble
(config.semi.shared_dir = <workdir>/teachers_<hash>): teachers are trained
once, students per config and seed.

The report (--results) holds, per group, a Markdown table of mean ± std over
seeds of PLCC / SROCC / KROCC / overall and the wall time per run; the paper's
claims as comparisons of rows; pseudo-label quality; the uncertainty check
(Spearman correlation of |error| with the predicted std on the test split,
coverage of ±1 and ±2 std); and PNG plots <results dir>/images/<report>_*.png
(RESULTS.md -> images/results_*.png: bars with error bars per group,
predictions vs labels of the best run, calibration of the best distribution
model). --notes inserts a hand-written Markdown file.
"""
import ast
import csv
import datetime
import functools
import glob
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import ml_collections
import numpy as np
import scipy.stats

from mdiqa_jax import files

RESULT_FILE = 'sweep_result.json'
FAILED_FILE = 'sweep_failed.json'
METRICS = ('plcc', 'srocc', 'krocc', 'overall')
# The paper's claims as (claim, better row, worse row); rows named <group>/<name>.
CLAIMS = (
    ('Both branches beat the ViT alone', 'ablations/full', 'ablations/vit_only'),
    ('Both branches beat the CNN alone', 'ablations/full', 'ablations/cnn_only'),
    ('Deformable alignment beats plain fusion', 'ablations/full', 'ablations/no_alignment'),
    ('K Gaussian scales beat one scale', 'ablations/full', 'ablations/single_scale'),
    ('Distribution regression beats point (L1) regression', 'ablations/full',
     'ablations/point_l1'),
    ('Hard pseudo-labels beat no semi-supervision', 'semi/hard', 'semi/none'),
    ('Soft pseudo-labels beat no semi-supervision', 'semi/soft', 'semi/none'),
    ('Confidence-filtered pseudo-labels beat no semi-supervision', 'semi/confidence',
     'semi/none'),
)


# --- Configs and runs -----------------------------------------------------------


def expand_config_patterns(patterns: Sequence[str]) -> List[str]:
  """Glob patterns / paths -> sorted, de-duplicated config files (errors name the pattern)."""
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise ValueError(f'--configs: {pattern!r} matches no file.')
    files.extend(m for m in matches if m not in files)
  return files


def run_name(config_file: str) -> str:
  """'configs/ablations/full.py' -> 'ablations/full'."""
  folder = os.path.basename(os.path.dirname(os.path.abspath(config_file)))
  return f'{folder}/{os.path.splitext(os.path.basename(config_file))[0]}'


def parse_override(override: str) -> tuple:
  """'optim.learning_rate=3e-4' -> ('optim.learning_rate', 0.0003) (strings stay strings)."""
  field, separator, text = override.partition('=')
  if not separator or not field:
    raise ValueError(f'--set={override!r}: expected FIELD=VALUE, e.g. num_train_steps=150.')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return field, value


def load_config(config_file: str, seed: int, overrides: Sequence[str]
                ) -> ml_collections.ConfigDict:
  """The config a run's command resolves: get_config(), seed, then the overrides."""
  spec = importlib.util.spec_from_file_location(
      'sweep_config_' + hashlib.sha1(config_file.encode()).hexdigest()[:8], config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.seed = seed
  for override in overrides:
    field, value = parse_override(override)
    parent = config
    *path, leaf = field.split('.')
    for name in path:
      parent = parent[name]
    if leaf not in parent:
      raise ValueError(f'--set={override!r}: {config_file} has no field {field!r}.')
    parent[leaf] = value
  return config


def _fingerprint(value: Any) -> str:
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _config_json(config: ml_collections.ConfigDict) -> Any:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def plan_run(config_file: str, seed: int, overrides: Sequence[str], workdir: str
             ) -> Dict[str, Any]:
  """Everything needed to start, skip or report one run."""
  config = load_config(config_file, seed, overrides)
  name = run_name(config_file)
  run_dir = os.path.join(workdir, name, f'seed_{seed}')
  is_semi = 'semi' in config
  arguments = [f'--config={config_file}', f'--config.seed={seed}']
  arguments += [f'--config.{field}={text}' for field, _, text in
                (override.partition('=') for override in overrides)]
  if is_semi:
    from mdiqa_jax import semi  # pylint: disable=g-import-not-at-top
    teachers = [_config_json(c) for c in semi.teacher_configs(config)]
    shared_dir = os.path.join(workdir, f'teachers_{_fingerprint(teachers)}')
    arguments.append(f'--config.semi.shared_dir={shared_dir}')
    with config.unlocked():
      config.semi.shared_dir = shared_dir
  arguments.append(f'--workdir={run_dir}')
  module = 'mdiqa_jax.semi' if is_semi else 'mdiqa_jax.train'
  return {'name': name, 'config_file': config_file, 'seed': seed, 'run_dir': run_dir,
          'kind': 'semi' if is_semi else 'train', 'module': module,
          'command': [sys.executable, '-m', module] + arguments,
          'fingerprint': _fingerprint(_config_json(config)),
          'description': _first_docstring_line(config_file),
          'head_type': config.model.head_type, 'test_split': config.data.test_split}


def _first_docstring_line(config_file: str) -> str:
  with open(config_file, encoding='utf-8') as f:
    docstring = ast.get_docstring(ast.parse(f.read())) or ''
  return docstring.strip().splitlines()[0] if docstring.strip() else ''


def _read_json(path: str) -> Any:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _outputs(plan: Dict[str, Any]) -> Dict[str, Any]:
  """Test metrics and predictions file of a finished command."""
  run_dir = plan['run_dir']
  if plan['kind'] == 'semi':
    result = _read_json(os.path.join(run_dir, 'result.json'))
    rounds = result['rounds']
    return {'test': result['test'], 'predictions': result['test_predictions'],
            'pseudo_labels': {
                'quality': rounds[-1]['pseudo_label_quality'],
                'selection': rounds[-1]['students'][0]['selection']},
            'teacher_wall_seconds': sum(
                _read_json(os.path.join(d, 'done.json'))['wall_seconds']
                for d in result['teacher_workdirs'])}
  eval_dir = os.path.join(run_dir, f'eval_{plan["test_split"]}')
  return {'test': _read_json(os.path.join(eval_dir, 'metrics.json')),
          'predictions': os.path.join(eval_dir, 'predictions.csv')}


def execute(plan: Dict[str, Any], finished: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Runs one planned command; returns what it writes to sweep_result.json (None if
  the command did not finish).

  `finished` maps config fingerprints to results of finished runs (a run
  with an identical config reuses one).
  """
  result_path = os.path.join(plan['run_dir'], RESULT_FILE)
  os.makedirs(plan['run_dir'], exist_ok=True)
  same = finished.get(plan['fingerprint'])
  if same is not None:
    result = dict(same, same_as=same['run_dir'], same_as_name=same['name'],
                  run_dir=plan['run_dir'], name=plan['name'], config_file=plan['config_file'])
    files.write_json_atomically(result_path, result)
    print(f'[sweep] {plan["name"]} seed {plan["seed"]}: same config as {same["run_dir"]}',
          flush=True)
    return result
  command = plan['command']
  print(f'[sweep] {plan["name"]} seed {plan["seed"]}: {shlex.join(command)}', flush=True)
  start = time.time()
  with open(os.path.join(plan['run_dir'], 'run.log'), 'a', encoding='utf-8') as log:
    returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  wall_seconds = time.time() - start
  outputs, reason = None, f'exit status {returncode}'
  if not returncode:
    try:
      outputs = _outputs(plan)
    except FileNotFoundError as e:  # A preempted run exits 0 before its test evaluation.
      reason = f'exit status 0 but no test results ({e})'
  if outputs is None:
    files.write_json_atomically(os.path.join(plan['run_dir'], FAILED_FILE),
                {'reason': reason, 'command': command, 'wall_seconds': wall_seconds})
    print(f'[sweep] NOT FINISHED ({reason}) after {wall_seconds:.0f} s; see '
          f'{plan["run_dir"]}/run.log; rerun the sweep to resume it.', flush=True)
    return None
  result = dict(outputs, name=plan['name'], seed=plan['seed'],
                config_file=plan['config_file'], run_dir=plan['run_dir'],
                command=shlex.join(command), wall_seconds=wall_seconds,
                fingerprint=plan['fingerprint'])
  files.write_json_atomically(result_path, result)
  if os.path.exists(os.path.join(plan['run_dir'], FAILED_FILE)):
    os.remove(os.path.join(plan['run_dir'], FAILED_FILE))
  print(f'[sweep] done in {wall_seconds:.0f} s: overall {result["test"]["overall"]:.4f}',
        flush=True)
  return result


# --- Statistics -----------------------------------------------------------------


def read_predictions(path: str) -> Dict[str, np.ndarray]:
  """predictions.csv (evaluate.write_report) -> 'label', 'score', 'uncertainty' (N,)."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  return {key: np.asarray([float(row[key]) for row in rows])
          for key in ('label', 'score', 'uncertainty')}


def uncertainty_check(predictions: Dict[str, np.ndarray]) -> Optional[Dict[str, float]]:
  """Does the predicted std track the error? None when the std is constant (point head).

  Returns Spearman and Pearson correlations of |score - label| with the
  predicted std, and the fraction of labels within 1 and 2 predicted stds
  (0.683 / 0.954 for a calibrated Gaussian).
  """
  error = np.abs(predictions['score'] - predictions['label'])
  std = predictions['uncertainty']
  if np.ptp(std) == 0 or np.ptp(error) == 0:
    return None
  return {'spearman': float(scipy.stats.spearmanr(error, std)[0]),
          'pearson': float(scipy.stats.pearsonr(error, std)[0]),
          'within_1_std': float(np.mean(error <= std)),
          'within_2_std': float(np.mean(error <= 2 * std)),
          'mean_std': float(np.mean(std)), 'rmse': float(np.sqrt(np.mean(error ** 2)))}


def calibration_bins(predictions: Dict[str, np.ndarray], num_bins: int = 5):
  """Equal-count bins of predicted std: (mean predicted std, RMSE, count) per bin."""
  order = np.argsort(predictions['uncertainty'], kind='stable')
  error = predictions['score'] - predictions['label']
  bins = []
  for chunk in np.array_split(order, num_bins):
    if chunk.size:
      bins.append((float(np.mean(predictions['uncertainty'][chunk])),
                   float(np.sqrt(np.mean(error[chunk] ** 2))), int(chunk.size)))
  return bins


def summarize(values: Sequence[float]) -> tuple:
  """(mean, sample std (ddof=1; 0 for one value), n)."""
  values = np.asarray(values, np.float64)
  return (float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0,
          int(values.size))


def compare(better: Sequence[float], worse: Sequence[float]) -> Dict[str, Any]:
  """Difference of means with its standard error and a verdict.

  'holds' when mean(better) - mean(worse) > 2 standard errors
  (sqrt(s_a^2/n_a + s_b^2/n_b)), 'reversed' when < -2 SE, otherwise 'within
  noise' (with the sign of the difference); no verdict with a single seed.
  """
  mean_a, std_a, n_a = summarize(better)
  mean_b, std_b, n_b = summarize(worse)
  difference = mean_a - mean_b
  standard_error = float(np.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b))
  if min(n_a, n_b) < 2:
    verdict = 'no verdict (one seed)'
  elif difference > 2 * standard_error:
    verdict = 'holds'
  elif difference < -2 * standard_error:
    verdict = 'reversed'
  else:
    verdict = 'within noise (' + ('same direction' if difference > 0 else 'opposite') + ')'
  return {'difference': difference, 'standard_error': standard_error, 'verdict': verdict}


# --- Report ---------------------------------------------------------------------


def _format(mean: float, std: float) -> str:
  return f'{mean:.4f} ± {std:.4f}'


def _plots(rows: Dict[str, List[Dict[str, Any]]], image_dir: str, results_dir: str,
           prefix: str) -> Dict[str, str]:
  """Writes the PNGs <image_dir>/<prefix>_*.png; returns name -> path relative to the report."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(image_dir, exist_ok=True)
  written = {}
  groups = sorted({name.split('/')[0] for name in rows})
  for group in groups:
    names = [name for name in rows if name.split('/')[0] == group]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6))
    for axis, metric in zip(axes, METRICS):
      stats = [summarize([r['test'][metric] for r in rows[name]]) for name in names]
      axis.bar(range(len(names)), [s[0] for s in stats], yerr=[s[1] for s in stats],
               capsize=4, color='tab:blue', alpha=0.8)
      axis.set_xticks(range(len(names)), [n.split('/')[1] for n in names], rotation=45,
                      ha='right', fontsize=8)
      low = min(s[0] - s[1] for s in stats)
      high = max(s[0] + s[1] for s in stats)
      margin = 0.15 * (high - low) + 1e-3
      axis.set_ylim(low - margin, high + margin)
      axis.set_title(metric.upper(), fontsize=10)
      axis.grid(axis='y', alpha=0.3)
    figure.suptitle(f'{group}: test metrics, mean ± std over seeds', fontsize=10)
    figure.tight_layout()
    path = os.path.join(image_dir, f'{prefix}_{group}_bars.png')
    files.save_figure_atomically(figure, path, dpi=110)
    plt.close(figure)
    written[f'{group} bars'] = os.path.relpath(path, results_dir)

  every_run = [r for name in rows for r in rows[name]]
  best = max(every_run, key=lambda r: r['test']['overall'])
  predictions = read_predictions(best['predictions'])
  figure, axis = plt.subplots(figsize=(5, 5))
  axis.scatter(predictions['label'], predictions['score'], s=8, alpha=0.6)
  axis.plot([0, 4], [0, 4], 'k--', linewidth=0.8)
  axis.set(xlim=(-0.2, 4.2), ylim=(-0.2, 4.2), xlabel='label (mean rater score)',
           ylabel='predicted score')
  axis.set_title(f'best run: {best["name"]} seed {best["seed"]}\n'
                 f'PLCC {best["test"]["plcc"]:.4f}  SROCC {best["test"]["srocc"]:.4f}  '
                 f'overall {best["test"]["overall"]:.4f}', fontsize=9)
  axis.grid(alpha=0.3)
  figure.tight_layout()
  path = os.path.join(image_dir, f'{prefix}_best_scatter.png')
  files.save_figure_atomically(figure, path, dpi=110)
  plt.close(figure)
  written['best scatter'] = os.path.relpath(path, results_dir)

  with_std = [r for r in every_run if r.get('uncertainty')]
  if with_std:
    best = max(with_std, key=lambda r: r['test']['overall'])
    predictions = read_predictions(best['predictions'])
    bins = calibration_bins(predictions)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    top = max(max(b[0] for b in bins), max(b[1] for b in bins)) * 1.15
    left.plot([b[0] for b in bins], [b[1] for b in bins], 'o-', label='RMSE per bin')
    left.plot([0, top], [0, top], 'k--', linewidth=0.8, label='calibrated')
    left.set(xlim=(0, top), ylim=(0, top), xlabel='mean predicted std (equal-count bins)',
             ylabel='RMSE of the score')
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.scatter(predictions['uncertainty'],
                  np.abs(predictions['score'] - predictions['label']), s=8, alpha=0.6)
    right.set(xlabel='predicted std', ylabel='|error|')
    right.grid(alpha=0.3)
    check = best['uncertainty']
    figure.suptitle(f'uncertainty of {best["name"]} seed {best["seed"]}: Spearman(|error|, '
                    f'std) {check["spearman"]:.3f}, within 1 std {check["within_1_std"]:.2f}',
                    fontsize=9)
    figure.tight_layout()
    path = os.path.join(image_dir, f'{prefix}_calibration.png')
    files.save_figure_atomically(figure, path, dpi=110)
    plt.close(figure)
    written['calibration'] = os.path.relpath(path, results_dir)
  return written


def write_report(results: Sequence[Dict[str, Any]], plans: Sequence[Dict[str, Any]],
                 path: str, *, command: str, notes: str = '') -> None:
  """Writes the Markdown report and its plots (module docstring).

  `command` is the sweep command that made the runs.
  """
  rows: Dict[str, List[Dict[str, Any]]] = {}
  for result in results:
    rows.setdefault(result['name'], []).append(result)
  descriptions = {plan['name']: plan['description'] for plan in plans}
  missing = sorted({(p['name'], p['seed']) for p in plans} -
                   {(r['name'], r['seed']) for r in results})
  results_dir = os.path.dirname(os.path.abspath(path))
  # Images are named after the report (RESULTS.md -> images/results_*.png).
  prefix = os.path.splitext(os.path.basename(path))[0].lower()
  plots = (_plots(rows, os.path.join(results_dir, 'images'), results_dir, prefix)
           if rows else {})

  lines = ['# Results', '',
           f'Written by `mdiqa_jax.sweep` on '
           f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC '
           f'({platform.machine()}, {os.cpu_count()} CPU cores, Python '
           f'{platform.python_version()}). Metrics are on the test split, mean ± sample '
           'std over seeds; "overall" = |PLCC| + |SROCC| + |KROCC| (LDCTIQAC2023).', '',
           'Command:', '', '```', command, '```', '']
  own_runs = [r['wall_seconds'] for r in results if 'same_as' not in r]
  lines += [f'{len(own_runs)} runs trained, {sum(own_runs) / 60:.1f} min of wall time in all '
            '(each run: process start, training, validation and test evaluation).', '']
  if notes:
    lines += [notes.strip(), '']
  groups = sorted({name.split('/')[0] for name in rows})
  for group in groups:
    lines += [f'## {group}', '',
              '| config | what it changes | seeds | PLCC | SROCC | KROCC | overall | '
              'wall s / run |', '|---|---|---|---|---|---|---|---|']
    for name in [n for n in rows if n.split('/')[0] == group]:
      runs = rows[name]
      cells = [_format(*summarize([r['test'][m] for r in runs])[:2]) for m in METRICS]
      own = [r['wall_seconds'] for r in runs if 'same_as' not in r]
      wall = f'{np.mean(own):.0f}' if own else f'runs of `{runs[0]["same_as_name"]}`'
      lines.append(f'| `{name}` | {descriptions.get(name, "")} | {len(runs)} | ' +
                   ' | '.join(cells) + f' | {wall} |')
    if f'{group} bars' in plots:
      lines += ['', f'![{group}]({plots[f"{group} bars"]})']
    lines.append('')

  claims = [(text, a, b) for text, a, b in CLAIMS if a in rows and b in rows]
  if claims:
    lines += ['## The paper\'s claims on this data', '',
              'Difference of mean overall score (better row minus worse row) and its '
              'standard error; "holds" needs a difference above two standard errors.', '',
              '| claim | rows | Δ overall | SE | verdict |', '|---|---|---|---|---|']
    for text, a, b in claims:
      comparison = compare([r['test']['overall'] for r in rows[a]],
                           [r['test']['overall'] for r in rows[b]])
      lines.append(f'| {text} | `{a}` vs `{b}` | {comparison["difference"]:+.4f} | '
                   f'{comparison["standard_error"]:.4f} | {comparison["verdict"]} |')
    lines.append('')

  semi_rows = {name: runs for name, runs in rows.items()
               if any('pseudo_labels' in r for r in runs)}
  if semi_rows:
    lines += ['## Pseudo-labels', '',
              'Quality of the teachers\' ensemble mean on the unlabeled split against its '
              'hidden simulated labels (never used in training), and of the slices each '
              'strategy kept.', '',
              '| config | ensemble PLCC | ensemble SROCC | kept / all | kept MAE | '
              'teacher training (s, once) |', '|---|---|---|---|---|---|']
    for name, runs in semi_rows.items():
      pseudo = runs[0]['pseudo_labels']
      kept = pseudo['selection']
      lines.append(f'| `{name}` | {pseudo["quality"]["plcc"]:.4f} | '
                   f'{pseudo["quality"]["srocc"]:.4f} | {kept["num_kept"]} / '
                   f'{kept["num_pseudo_labeled"]} | {kept["kept_mae_vs_hidden_labels"]:.3f} | '
                   f'{runs[0]["teacher_wall_seconds"]:.0f} |')
    lines.append('')

  checked = {name: [r['uncertainty'] for r in runs if r.get('uncertainty')]
             for name, runs in rows.items()}
  checked = {name: values for name, values in checked.items() if values}
  if checked:
    lines += ['## Uncertainty check', '',
              'Does the predicted standard deviation (spread of the predicted score '
              'distribution) track the error? Spearman and Pearson correlation of '
              '|score − label| with the predicted std on the test split, the fraction of '
              'labels within 1 and 2 predicted stds (0.683 / 0.954 if the std were a '
              'calibrated Gaussian std), and mean predicted std vs RMSE. Point-regression '
              'rows predict no std and are left out.', '',
              '| config | Spearman | Pearson | within 1 std | within 2 std | mean std | '
              'RMSE |', '|---|---|---|---|---|---|---|']
    for name, values in checked.items():
      cells = [_format(*summarize([v[key] for v in values])[:2]) for key in
               ('spearman', 'pearson', 'within_1_std', 'within_2_std', 'mean_std', 'rmse')]
      lines.append(f'| `{name}` | ' + ' | '.join(cells) + ' |')
    if 'calibration' in plots:
      lines += ['', f'![calibration]({plots["calibration"]})']
    lines.append('')
  if 'best scatter' in plots:
    lines += ['## Best run', '', f'![best run]({plots["best scatter"]})', '']

  lines += ['## Runs', '', '| run | seed | overall | wall s | command |', '|---|---|---|---|---|']
  for result in results:
    command_cell = (f'same config as `{result["same_as_name"]}`' if 'same_as' in result
                    else f'`{result["command"]}`')
    lines.append(f'| `{result["name"]}` | {result["seed"]} | '
                 f'{result["test"]["overall"]:.4f} | {result["wall_seconds"]:.0f} | '
                 f'{command_cell} |')
  if missing:
    lines += ['', 'Not run (or failed): ' + ', '.join(f'`{n}` seed {s}' for n, s in missing)
              + '.']
  files.write_text_atomically(path, '\n'.join(lines) + '\n')


def run_sweep(config_patterns: Sequence[str], seeds: Sequence[int], workdir: str,
              results_path: str, *, overrides: Sequence[str] = (), notes: str = '',
              report_only: bool = False, command: str = '') -> List[Dict[str, Any]]:
  """Runs every (config, seed) not finished yet, then writes the report.

  The sweep command is kept in <workdir>/sweep_command.json; --report_only
  reports that command, not its own.

  Returns the results of the finished runs, in (seed, config) order.
  """
  workdir = os.path.abspath(workdir)
  command_path = os.path.join(workdir, 'sweep_command.json')
  if report_only:
    command = _read_json(command_path)['command'] if os.path.exists(command_path) else command
  else:
    os.makedirs(workdir, exist_ok=True)
    files.write_json_atomically(command_path, {'command': command})
  # Seed-major order: every row gets its first seed before any gets its second,
  # so a sweep stopped early still fills the whole table.
  plans = [plan_run(config_file, seed, overrides, workdir)
           for seed in seeds for config_file in expand_config_patterns(config_patterns)]
  results = []
  finished: Dict[str, Dict[str, Any]] = {}
  for plan in plans:
    result_path = os.path.join(plan['run_dir'], RESULT_FILE)
    was_finished = os.path.exists(result_path)
    if report_only or was_finished:
      result = _read_json(result_path) if was_finished else None
    else:
      result = execute(plan, finished)
    if result is None:
      continue
    if 'uncertainty' not in result:
      result['uncertainty'] = uncertainty_check(read_predictions(result['predictions']))
    finished.setdefault(plan['fingerprint'], result)
    results.append(result)
    if not (report_only or was_finished):  # The report follows the sweep as it goes.
      write_report(results, plans, results_path, command=command, notes=notes)
  write_report(results, plans, results_path, command=command, notes=notes)
  return results


def _define_flags() -> Dict[str, Any]:
  return {
      'configs': flags.DEFINE_list('configs', None,
                                   'Config files or glob patterns, comma-separated.'),
      'seeds': flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds, comma-separated.'),
      'workdir': flags.DEFINE_string('workdir', None, 'One sub-directory per run.'),
      'results': flags.DEFINE_string('results', 'docs/RESULTS.md', 'The Markdown report.'),
      'set': flags.DEFINE_multi_string(
          'set', [], 'FIELD=VALUE config override for every run (repeatable), e.g. '
          '--set=num_train_steps=150.'),
      'notes': flags.DEFINE_string('notes', None, 'Markdown file inserted into the report.'),
      'report_only': flags.DEFINE_bool('report_only', False,
                                       'Write the report from finished runs; run nothing.'),
  }


def main(argv, command_flags: Dict[str, Any]):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  values = {name: holder.value for name, holder in command_flags.items()}
  if not values['configs'] or not values['workdir']:
    raise app.UsageError('Give --configs=PATTERN[,PATTERN...] and --workdir=DIR.')
  try:
    seeds = [int(seed) for seed in values['seeds']]
  except ValueError as e:
    raise app.UsageError(f'--seeds={",".join(values["seeds"])}: expected integers.') from e
  notes = ''
  if values['notes']:
    with open(values['notes'], encoding='utf-8') as f:
      notes = f.read()
  command = shlex.join(['python', '-m', 'mdiqa_jax.sweep'] + sys.argv[1:])
  run_sweep(values['configs'], seeds, values['workdir'], values['results'],
            overrides=values['set'], notes=notes, report_only=values['report_only'],
            command=command)


def run():
  """Console entry point `mdiqa-sweep`."""
  app.run(functools.partial(main, command_flags=_define_flags()))


if __name__ == '__main__':
  run()
