"""Side-by-side scoring of two folders: did a denoiser (or a protocol) help?

  mdiqa-predict --compare noisy/ denoised/ [--output=change.csv] [--plot=change.png]

Files are paired by their path relative to each folder (noisy/a/x.dcm with
denoised/a/x.dcm), slices by their index in the file. Every pair gives one
row: file, slice, score_before, score_after, change (= after - before, score
units; > 0: the second folder scores better), uncertainty_before/after. The
summary gives the mean, median and spread of the change, the fraction of
slices that improved, and a two-sided Wilcoxon signed-rank p-value (scipy) of
"no change"; files found in only one folder, and files that failed, are
listed, not silently dropped. The plot shows score after against score
before (the diagonal is "no change") and the histogram of the changes.
"""
import dataclasses
import math
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
from scipy import stats

from mdiqa_jax import files
from mdiqa_jax import io as ct_io
from mdiqa_jax.inference import rows as rows_lib

ScorePaths = Callable[[Sequence[str]], Tuple[List[Dict[str, Any]], List[Any]]]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Paired scores of two folders (module docstring)."""
  rows: List[Dict[str, Any]]
  summary: Dict[str, Any]
  only_before: List[str]
  only_after: List[str]
  failures: List[Dict[str, str]]


def _relative_files(folder: str) -> Tuple[Dict[str, str], List[Any]]:
  """{path relative to `folder`: path} of its input files, and the failures found."""
  if not os.path.isdir(folder):
    raise ct_io.InputFileError(folder, 'not a folder (--compare takes two folders).')
  found = ct_io.find_inputs([folder])
  return {os.path.relpath(path, folder): path for path, _ in found.files}, list(found.failures)


def compare_folders(before: str, after: str, score_paths: ScorePaths) -> Comparison:
  """Scores the files the two folders share and pairs their slices.

  Args:
    before, after: folders of input files (any format mdiqa-predict reads).
    score_paths: paths -> (rows, failures) as `inference.paths.predict_paths` returns.

  Raises:
    InputFileError: a folder is missing, or the folders share no file.
  """
  before_files, before_failures = _relative_files(before)
  after_files, after_failures = _relative_files(after)
  shared = sorted(before_files.keys() & after_files.keys())
  if not shared:
    raise ct_io.InputFileError(after, f'no file has the same relative path as one in '
                               f'{before} (files are paired by path within the folders).')
  scored = {}
  failures = [rows_lib.failure_row(e) for e in before_failures + after_failures]
  for side, paths in (('before', before_files), ('after', after_files)):
    rows, side_failures = score_paths([paths[name] for name in shared])
    failures += [rows_lib.failure_row(e) for e in side_failures]
    by_path = {path: name for name, path in paths.items()}
    for row in rows:
      scored[(side, by_path.get(row['file'], row['file']), row['slice'])] = row
  rows = []
  for name in shared:
    slices = sorted(index for side, file, index in scored if side == 'before' and file == name)
    for index in slices:
      first, second = scored[('before', name, index)], scored.get(('after', name, index))
      if second is None:
        continue
      rows.append({'file': name, 'slice': index, 'score_before': first['score'],
                   'score_after': second['score'],
                   'change': second['score'] - first['score'],
                   'uncertainty_before': first['uncertainty'],
                   'uncertainty_after': second['uncertainty']})
  return Comparison(rows, summarise(rows), sorted(before_files.keys() - after_files.keys()),
                    sorted(after_files.keys() - before_files.keys()), failures)


def summarise(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """Mean / median / std of the change, fraction improved, Wilcoxon p-value."""
  change = np.array([row['change'] for row in rows], np.float64)
  if change.size == 0:
    return {'num_pairs': 0}
  summary = {
      'num_pairs': int(change.size),
      'mean_score_before': float(np.mean([row['score_before'] for row in rows])),
      'mean_score_after': float(np.mean([row['score_after'] for row in rows])),
      'mean_change': float(change.mean()),
      'median_change': float(np.median(change)),
      'std_change': float(change.std(ddof=1)) if change.size > 1 else 0.0,
      'fraction_improved': float(np.mean(change > 0)),
      'wilcoxon_p': math.nan,
  }
  if change.size >= 2 and np.any(change != 0):
    summary['wilcoxon_p'] = float(stats.wilcoxon(change).pvalue)
  return summary


def format_summary(comparison: Comparison, before: str, after: str) -> str:
  """Lines for the terminal."""
  s = comparison.summary
  if not s['num_pairs']:
    return 'no slice could be scored in both folders.'
  lines = [f'{s["num_pairs"]} slice pairs: mean score {s["mean_score_before"]:.3f} '
           f'({before}) -> {s["mean_score_after"]:.3f} ({after}), change '
           f'{s["mean_change"]:+.3f} (median {s["median_change"]:+.3f}, std '
           f'{s["std_change"]:.3f}); {100 * s["fraction_improved"]:.0f} % improved; '
           f'Wilcoxon p = {s["wilcoxon_p"]:.2g}']
  for label, names in (('only in ' + before, comparison.only_before),
                       ('only in ' + after, comparison.only_after)):
    if names:
      lines.append(f'{len(names)} file(s) {label} (not compared): ' + ', '.join(names[:5])
                   + (' ...' if len(names) > 5 else ''))
  return '\n'.join(lines)


def plot(comparison: Comparison, path: str, before: str, after: str) -> None:
  """Score after vs before (diagonal: no change) and the histogram of changes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  first = np.array([row['score_before'] for row in comparison.rows])
  second = np.array([row['score_after'] for row in comparison.rows])
  figure, (scatter, histogram) = plt.subplots(1, 2, figsize=(10, 4.4))
  scatter.scatter(first, second, s=14, alpha=0.7)
  scatter.plot([0, 4], [0, 4], color='grey', lw=1, ls='--', label='no change')
  scatter.set(xlim=(0, 4), ylim=(0, 4), xlabel=f'score, {before}', ylabel=f'score, {after}',
              title='each slice')
  scatter.legend(loc='lower right')
  histogram.hist(second - first, bins=min(30, max(5, len(first) // 2)), color='tab:green')
  histogram.axvline(0, color='grey', lw=1, ls='--')
  histogram.set(xlabel='change in score (after - before)', ylabel='slices',
                title=f'mean change {comparison.summary["mean_change"]:+.3f}')
  figure.tight_layout()
  files.save_figure_atomically(figure, path, dpi=110)
  plt.close(figure)
