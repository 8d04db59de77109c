r"""Does the model rank real CT slices by dose and by view count? (issue 11, item 5)

The real CT slices that pip packages ship (pydicom's CT_small.dcm, pydicom-
data's 693_UNCI.dcm and both frames of eCT_Supplemental.dcm) are rescanned by
an independent simulator (`independent_ct_simulator`: scikit-image's radon /
iradon, no mdiqa_jax code) at 100 / 50 / 25 / 10 % dose with --full_views
views, and at 256 / 128 / 64 views with full dose (per-view photons kept), two
noise seeds each. I0 is set per slice (like automatic exposure control) so
that the 100 % scan adds --target_noise_hu of noise in soft tissue. Each scan
is written as a CT DICOM (int16, the source's PixelSpacing) into --work_dir
and all are scored in one `python -m mdiqa_jax.predict [--checkpoint=...]` run,
exactly as a user would score them.

Reports (printed, and written to --output as JSON):
  slices[]                   per source slice: pixel spacing, I0, Spearman
                             (score, dose) over its full-view scans,
                             Spearman(score, views) over its full-dose scans
                             (the 100 % full-view scan tops the views axis),
                             and per degradation the noise std (HU, soft-
                             tissue ROI, scan - source: noise, streaks and
                             the FBP's own error: 11 HU on CT_small) and
                             the score (mean and std over seeds);
  pooled_spearman_dose/views plain Spearman over the pooled rows of all
                             slices (no ranking within slice);
  mean_slice_spearman_*      the mean of the per-slice values;
  scans[]                    every scored file's row.
And a figure (--figure): per slice, 1:1 native-resolution crops at 100 %,
10 % dose and 64 views, score vs dose and score vs views (error bars: std
over seeds). Target (issue 11): Spearman >= 0.9 for each.

The eCT_Supplemental frames are a perfusion map stored as CT (brain, 0.39
mm): its zero-flow pixels read -1024 HU, air inside the head to a simulator,
so its sparse-view scans streak more than the other slices'.

  PYTHONPATH=. .venv/bin/python bench/real_ct_transfer.py --checkpoint=runs/default
  PYTHONPATH=. .venv/bin/python bench/real_ct_transfer.py      (the bundled model)
"""
import dataclasses
import functools
import importlib.resources
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from scipy import stats

import bench_common
import independent_ct_simulator as simulator
from mdiqa_jax import files

def _define_flags() -> dict:
  """The command's flags, defined only when run as a command (the test imports this
  module beside others that define flags of the same names, e.g. --output)."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, "Training workdir to score with, e.g. the README's main job's "
          'runs/default (default: the model bundled with the package).'),
      'work_dir': flags.DEFINE_string(
          'work_dir', None, 'Folder for the degraded DICOMs and the predictions (default: a '
          'new temporary folder, kept).'),
      'full_views': flags.DEFINE_integer('full_views', 1024,
                                         'Views over 180 degrees of a full scan.'),
      'filter': flags.DEFINE_enum('filter', 'ramp',
                                  ['ramp', 'shepp-logan', 'cosine', 'hamming', 'hann'],
                                  'FBP filter of the reconstructions.'),
      'target_noise_hu': flags.DEFINE_float(
          'target_noise_hu', 20.0,
          'Noise the 100 %-dose full-view scan adds in soft tissue, HU.'),
      'output': flags.DEFINE_string(
          'output', os.path.join(os.path.dirname(__file__), 'results', 'real_ct_transfer.json'),
          'JSON file to write.'),
      'figure': flags.DEFINE_string(
          'figure', os.path.join(os.path.dirname(__file__), '..', 'docs', 'images',
                                 'real_ct_transfer.png'), 'Figure to write.'),
  }

DOSES = (1.0, 0.5, 0.25, 0.1)
SPARSE_VIEWS = (256, 128, 64)
SEEDS = (0, 1)
# (package, path inside it) of every source file.
SOURCE_FILES = (('pydicom.data', 'test_files/CT_small.dcm'),
                ('data_store', 'data/693_UNCI.dcm'),
                ('data_store', 'data/eCT_Supplemental.dcm'))
TARGET_SPEARMAN = 0.9


@dataclasses.dataclass(frozen=True)
class Degradation:
  """One rescan: dose fraction of the full-dose photons per view, views over 180 degrees."""
  dose: float
  views: int
  seed: int


def degradations(full_views: int, doses: Sequence[float] = DOSES,
                 sparse_views: Sequence[int] = SPARSE_VIEWS,
                 seeds: Sequence[int] = SEEDS) -> list[Degradation]:
  """Every dose at full views, then every sparse view count at full dose, per seed.

  Raises:
    ValueError: a sparse view count does not divide full_views (a sparse scan
      takes every (full_views / views)-th view of the full one).
  """
  for views in sparse_views:
    if full_views % views:
      raise ValueError(f'{views} views do not divide the {full_views} of a full scan.')
  settings = [(dose, full_views) for dose in doses] + [(1.0, views) for views in sparse_views]
  return [Degradation(dose, views, seed) for dose, views in settings for seed in seeds]


def source_slices() -> list[simulator.SourceSlice]:
  """The four real slices of SOURCE_FILES, found through their packages' import paths."""
  slices = []
  for package, relative in SOURCE_FILES:
    path = str(importlib.resources.files(package).joinpath(relative))
    slices += simulator.read_source_slices(path, os.path.splitext(os.path.basename(path))[0])
  return slices


def scan_slice(slice_number: int, source: simulator.SourceSlice, plan: Sequence[Degradation],
               *, full_views: int, filter_name: str, target_noise_hu: float,
               work_dir: str) -> tuple[float, list[dict[str, Any]]]:
  """Rescans one slice with every degradation of `plan` and writes each as DICOM.

  One noise-free projection at `full_views` serves every scan (a sparse scan
  takes every (full_views / views)-th view). Noise generators are seeded by
  (slice_number, seed, views, dose in per mille); the I0 calibration uses
  (slice_number, 0, 0, 0), a views value no scan has.

  Args:
    slice_number: the slice's index, part of every noise seed.
    source: the real slice, (N, N) HU.
    plan: the scans (`degradations`).
    full_views: views of a full scan over 180 degrees.
    filter_name: FBP filter (`independent_ct_simulator.reconstruct`).
    target_noise_hu: noise the full-dose full-view scan adds in soft tissue, HU.
    work_dir: folder the DICOM files are written into.

  Returns:
    (I0, rows): the photons per ray and view at full dose, and one row per
    scan: slice, dose, views, seed, file (absolute path), noise_std_hu.
  """
  size = source.hu.shape[0]
  if source.hu.shape != (size, size):
    raise ValueError(f'{source.path}: slice of shape {source.hu.shape}; expected a square.')
  angles = simulator.view_angles(full_views)
  line_integrals = simulator.project(source.hu, source.pixel_mm, angles)
  roi = simulator.soft_tissue_roi(source.hu, source.pixel_mm)
  photons = simulator.photons_for_noise(
      line_integrals, angles, size, source.pixel_mm, filter_name, roi, target_noise_hu,
      np.random.default_rng((slice_number, 0, 0, 0)))
  rows = []
  for degradation in plan:
    step = full_views // degradation.views
    permille = int(round(degradation.dose * 1000))
    rng = np.random.default_rng((slice_number, degradation.seed, degradation.views, permille))
    noisy = simulator.add_poisson_noise(line_integrals[:, ::step], photons * degradation.dose,
                                        rng)
    hu = simulator.reconstruct(noisy, angles[::step], size, source.pixel_mm, filter_name)
    label = (f'{source.name} dose {degradation.dose:.0%} {degradation.views} views '
             f'seed {degradation.seed}')
    path = os.path.abspath(os.path.join(work_dir, _file_name(source.name, degradation)))
    simulator.write_ct_dicom(path, hu, source.pixel_mm, description=label,
                             study_key=[source.name], instance_key=[label])
    rows.append({'slice': source.name, 'dose': degradation.dose, 'views': degradation.views,
                 'seed': degradation.seed, 'file': path,
                 'noise_std_hu': simulator.noise_std_hu(hu, source.hu, roi)})
  return photons, rows


def _file_name(slice_name: str, degradation: Degradation) -> str:
  stem = slice_name.replace('[', '_').replace(']', '')
  return (f'{stem}_dose{int(round(degradation.dose * 100)):03d}_views{degradation.views:04d}'
          f'_seed{degradation.seed}.dcm')


def score_files(checkpoint: Optional[str], paths: Sequence[str], output_json: str,
                env: Optional[dict[str, str]] = None) -> dict[str, dict[str, float]]:
  """Scores files with the project's command line, `python -m mdiqa_jax.predict`.

  Args:
    checkpoint: training workdir or step directory (--checkpoint); None scores
      with the bundled model.
    paths: DICOM files, one slice each.
    output_json: where predict writes its JSON (replaced if it exists).
    env: the command's environment (default: this process's).

  Returns:
    {absolute path: {'score', 'uncertainty'}}, one entry per file.

  Raises:
    RuntimeError: predict failed, or did not return exactly one slice per file.
  """
  command = [sys.executable, '-m', 'mdiqa_jax.predict',
             *([f'--checkpoint={checkpoint}'] if checkpoint else []), *paths, f'--output={output_json}', '--overwrite', '--noprogress']
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    raise RuntimeError(f'mdiqa_jax.predict exited {result.returncode}:\n{result.stderr[-4000:]}')
  with open(output_json, encoding='utf-8') as f:
    rows = json.load(f)['slices']
  scores = {os.path.abspath(row['file']): {'score': row['score'],
                                           'uncertainty': row['uncertainty']} for row in rows}
  expected = {os.path.abspath(path) for path in paths}
  if len(rows) != len(expected) or set(scores) != expected:
    raise RuntimeError(f'predict returned {len(rows)} rows for {len(expected)} files '
                       f'(missing: {sorted(expected - set(scores))[:3]}).')
  return scores


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
  """Spearman's rho, or None where it is undefined (a constant input)."""
  rho = stats.spearmanr(x, y).statistic
  return None if math.isnan(rho) else float(rho)


def _axes(rows: Sequence[dict[str, Any]], full_views: int):
  """(dose-axis rows: full views; views-axis rows: full dose)."""
  return ([r for r in rows if r['views'] == full_views], [r for r in rows if r['dose'] == 1.0])


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
  """Mean of the values; None when any is undefined."""
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if len(defined) == len(values) and defined else None


def summarise(rows: Sequence[dict[str, Any]], full_views: int) -> dict[str, Any]:
  """Spearman per slice and pooled, and per degradation noise and score.

  Args:
    rows: one per scan, with slice, dose, views, seed, noise_std_hu, score.
    full_views: the view count of a full scan.

  Returns:
    {'slices': [{name, spearman_dose, spearman_views, degradations: [{dose,
    views, noise_std_hu, score_mean, score_std, scores}]}], 'pooled_spearman_dose',
    'pooled_spearman_views', 'mean_slice_spearman_dose', 'mean_slice_spearman_views'}.
  """
  slices = []
  for name in dict.fromkeys(r['slice'] for r in rows):
    own = [r for r in rows if r['slice'] == name]
    by_dose, by_views = _axes(own, full_views)
    settings = dict.fromkeys((r['dose'], r['views']) for r in own)
    slices.append({
        'name': name,
        'spearman_dose': spearman([r['dose'] for r in by_dose], [r['score'] for r in by_dose]),
        'spearman_views': spearman([r['views'] for r in by_views],
                                   [r['score'] for r in by_views]),
        'degradations': [_degradation_summary([r for r in own if (r['dose'], r['views']) == s])
                         for s in settings],
    })
  by_dose, by_views = _axes(rows, full_views)
  return {
      'slices': slices,
      'pooled_spearman_dose': spearman([r['dose'] for r in by_dose],
                                       [r['score'] for r in by_dose]),
      'pooled_spearman_views': spearman([r['views'] for r in by_views],
                                        [r['score'] for r in by_views]),
      'mean_slice_spearman_dose': _mean([s['spearman_dose'] for s in slices]),
      'mean_slice_spearman_views': _mean([s['spearman_views'] for s in slices]),
  }


def _degradation_summary(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One degradation's rows (one per seed) -> noise and score, mean and spread."""
  scores = [r['score'] for r in seeds]
  return {'dose': seeds[0]['dose'], 'views': seeds[0]['views'],
          'noise_std_hu': float(np.mean([r['noise_std_hu'] for r in seeds])),
          'score_mean': float(np.mean(scores)), 'score_std': float(np.std(scores)),
          'scores': scores}


def _format_rho(rho: Optional[float]) -> str:
  return '  n/a' if rho is None else f'{rho:+.2f}'


def print_table(summary: dict[str, Any], sources: Sequence[dict[str, Any]]) -> None:
  """Per slice: the degradations' noise and scores, then the Spearman values."""
  for source, result in zip(sources, summary['slices']):
    print(f"\n{result['name']}: {source['size']} px, {source['pixel_mm']:.3f} mm, "
          f"I0 {source['photons_i0']:.3g}")
    print(f"  {'dose':>5} {'views':>5} {'noise HU':>9} {'score':>6} {'+-':>5}")
    for d in result['degradations']:
      print(f"  {d['dose']:>5.0%} {d['views']:>5d} {d['noise_std_hu']:>9.1f} "
            f"{d['score_mean']:>6.3f} {d['score_std']:>5.3f}")
    print(f"  Spearman(score, dose) {_format_rho(result['spearman_dose'])}   "
          f"Spearman(score, views) {_format_rho(result['spearman_views'])}")
  print(f"\npooled (all slices' rows, plain Spearman): dose "
        f"{_format_rho(summary['pooled_spearman_dose'])}, views "
        f"{_format_rho(summary['pooled_spearman_views'])}")
  print(f"mean of per-slice values:                  dose "
        f"{_format_rho(summary['mean_slice_spearman_dose'])}, views "
        f"{_format_rho(summary['mean_slice_spearman_views'])}   (target >= {TARGET_SPEARMAN})")


# Figure layout, screen pixels at FIGURE_DPI: crops are shown pixel for pixel.
CROP_PX, PLOT_PX, GAP_PX, HEADER_PX, FIGURE_DPI = 256, 300, 70, 50, 100
# (dose, views at full_views=None, title) of the crops shown per slice (seed 0).
SHOWN_SCANS = ((1.0, None, '100 % dose'), (0.1, None, '10 % dose'),
               (1.0, min(SPARSE_VIEWS), f'{min(SPARSE_VIEWS)} views'))


def _crop(image: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
  """(S, S) window of `image` around `centre`, inside the image (S = CROP_PX or less)."""
  side = min(CROP_PX, *image.shape)
  top, left = (int(np.clip(c - side // 2, 0, n - side)) for c, n in zip(centre, image.shape))
  return image[top:top + side, left:left + side]


def _crop_centre(source: simulator.SourceSlice) -> tuple[int, int]:
  """Centre of the slice's soft-tissue ROI (row, column), so the crop shows tissue."""
  rows, cols = np.nonzero(simulator.soft_tissue_roi(source.hu, source.pixel_mm))
  return int(np.mean(rows)), int(np.mean(cols))


def _plot_trend(ax, result: dict[str, Any], axis: str, full_views: int) -> None:
  """Score (mean, error bar = std over seeds) against dose (%) or views, log x."""
  on_axis = [d for d in result['degradations']
             if (d['views'] == full_views if axis == 'dose' else d['dose'] == 1.0)]
  x = [d[axis] * (100 if axis == 'dose' else 1) for d in on_axis]
  ax.errorbar(x, [d['score_mean'] for d in on_axis], yerr=[d['score_std'] for d in on_axis],
              marker='o', capsize=3)
  ax.set_xscale('log')
  ax.set_xticks(x, [f'{v:g}' for v in x])
  ax.minorticks_off()
  ax.set_xlabel('dose (%)' if axis == 'dose' else 'views', fontsize=8)
  ax.set_ylabel('score', fontsize=8)
  ax.tick_params(labelsize=7)
  ax.set_title(f"Spearman(score, {axis}) {_format_rho(result['spearman_' + axis])}", fontsize=8)


def plot(summary: dict[str, Any], rows: Sequence[dict[str, Any]],
         sources: Sequence[simulator.SourceSlice], full_views: int, path: str) -> None:
  """Per slice: 1:1 crops of SHOWN_SCANS, score vs dose and score vs views.

  The crops are read back from the scored DICOMs and drawn pixel for pixel
  (each image axes is exactly as many screen pixels as the crop at
  FIGURE_DPI), soft-tissue window 400 / 40 HU, titled with the scan's noise.
  """
  row_px = CROP_PX + 60
  width_px = len(SHOWN_SCANS) * (CROP_PX + 20) + 2 * (PLOT_PX + GAP_PX)
  height_px = HEADER_PX + row_px * len(sources)
  figure = plt.figure(figsize=(width_px / FIGURE_DPI, height_px / FIGURE_DPI), dpi=FIGURE_DPI)

  def axes(left_px, bottom_px, w_px, h_px):
    return figure.add_axes([left_px / width_px, bottom_px / height_px, w_px / width_px,
                            h_px / height_px])

  for number, (source, result) in enumerate(zip(sources, summary['slices'])):
    top = height_px - HEADER_PX - row_px * number - 40  # Below the titles.
    centre = _crop_centre(source)
    for column, (dose, views, title) in enumerate(SHOWN_SCANS):
      scan = next(r for r in rows if r['slice'] == source.name and r['dose'] == dose
                  and r['views'] == (views or full_views) and r['seed'] == SEEDS[0])
      image = _crop(simulator.read_source_slices(scan['file'], 'scan')[0].hu, centre)
      ax = axes(10 + column * (CROP_PX + 20), top - image.shape[0], image.shape[1],
                image.shape[0])
      ax.imshow(image, cmap='gray', vmin=-160, vmax=240, interpolation='nearest')
      ax.set_axis_off()
      ax.set_title(f'{source.name if column == 0 else ""}\n{title}, noise '
                   f"{scan['noise_std_hu']:.0f} HU", fontsize=8, loc='left')
    for panel, axis in enumerate(('dose', 'views')):
      left = len(SHOWN_SCANS) * (CROP_PX + 20) + GAP_PX + panel * (PLOT_PX + GAP_PX)
      _plot_trend(axes(left, top - CROP_PX + 40, PLOT_PX, CROP_PX - 40), result, axis,
                  full_views)
  figure.suptitle(f"Real CT rescanned by scikit-image: pooled Spearman dose "
                  f"{_format_rho(summary['pooled_spearman_dose'])}, views "
                  f"{_format_rho(summary['pooled_spearman_views'])}", fontsize=10)
  files.save_figure_atomically(figure, path, dpi=FIGURE_DPI)
  plt.close(figure)
  print(f'Wrote {path}')


def _bundled_sha256() -> str:
  from mdiqa_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  return bundled.read_record()['sha256']


def main(argv: Sequence[str], command_flags: dict) -> None:
  values = {name: holder.value for name, holder in command_flags.items()}
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  start = time.perf_counter()
  work_dir = values['work_dir'] or tempfile.mkdtemp(prefix='real_ct_transfer_')
  os.makedirs(work_dir, exist_ok=True)
  full_views = values['full_views']
  plan = degradations(full_views)
  sources = source_slices()
  rows, source_info = [], []
  for number, source in enumerate(sources):
    scan_start = time.perf_counter()
    photons, scans = scan_slice(number, source, plan, full_views=full_views,
                                filter_name=values['filter'],
                                target_noise_hu=values['target_noise_hu'], work_dir=work_dir)
    rows += scans
    source_info.append({'name': source.name, 'file': os.path.basename(source.path),
                        'frame': source.frame, 'size': source.hu.shape[0],
                        'pixel_mm': source.pixel_mm, 'photons_i0': photons})
    print(f'{source.name}: {len(scans)} scans in {time.perf_counter() - scan_start:.0f} s '
          f'(I0 {photons:.3g})', flush=True)
  print(f'Scoring {len(rows)} files in {work_dir} ...', flush=True)
  scores = score_files(values['checkpoint'], [r['file'] for r in rows],
                       os.path.join(work_dir, 'predictions.json'))
  rows = [dict(r, **scores[r['file']]) for r in rows]
  summary = summarise(rows, full_views)
  print_table(summary, source_info)
  for info, result in zip(source_info, summary['slices']):
    result.update(info)
  bench_common.write_results(values['output'], dict(
      summary,
      checkpoint=(os.path.abspath(values['checkpoint']) if values['checkpoint']
                  else 'bundled:' + _bundled_sha256()),
      settings={'full_views': full_views, 'doses': list(DOSES),
                'sparse_views': list(SPARSE_VIEWS), 'seeds': list(SEEDS),
                'filter': values['filter'], 'target_noise_hu': values['target_noise_hu'],
                'mu_water_per_mm': simulator.MU_WATER_PER_MM,
                'target_spearman': TARGET_SPEARMAN},
      scans=[dict(r, file=os.path.basename(r['file'])) for r in rows],
      machine=bench_common.machine_info(),
      wall_seconds=time.perf_counter() - start))
  plot(summary, rows, sources, full_views, values['figure'])


if __name__ == '__main__':
  app.run(functools.partial(main, command_flags=_define_flags()))
