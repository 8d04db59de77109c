"""The sweep report: Markdown tables over seeds, the paper's claims, plots."""
import datetime
import os
import platform
from typing import Any, Dict, List, Sequence

import numpy as np

from mdiqa_jax import files

from mdiqa_jax.evaluation.report import score_scatter
from mdiqa_jax.tools.sweep.plan import METRICS
from mdiqa_jax.tools.sweep.stats import calibration_bins, compare, read_predictions, summarize

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
  figure = score_scatter(
      predictions['label'], predictions['score'],
      f'best run: {best["name"]} seed {best["seed"]}\n'
      f'PLCC {best["test"]["plcc"]:.4f}  SROCC {best["test"]["srocc"]:.4f}  '
      f'overall {best["test"]["overall"]:.4f}', size=5, title_size=9)
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
