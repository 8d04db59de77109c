r"""Does a trained model's score fall with dose? (issue 7, must-show 3)

Takes a training workdir (trains the --config there first when it holds no
checkpoint, with `train.train_and_evaluate`), then scans --num_slices slices
of the synthetic dataset's test patients at each --doses level (full view
count, the slice's own kernel and thickness) with the project simulator
(`synthetic.simulate_scans`: one projection per slice, the physics and spec
the training data came from), stores each reconstruction as a CT DICOM with
its pixel spacing and scores the folder with `predict.predict_paths`, i.e.
through the reading, windowing and whole-slice native scoring of
mdiqa-predict.

Reports (printed and written as JSON):
  spearman_score_dose         Spearman between score and dose over all scans;
  per_slice                   Spearman between score and dose within each
                              slice (its 4 scans): mean, the fractions of
                              slices with rho = 1 (monotone) and rho > 0, and
                              the fraction of one-level dose reductions
                              (100 -> 75 -> 50 -> 25 %) that lower the value;
                              the same for the simulated radiologists' labels;
  mean_score_by_dose          mean score at each dose;
  spearman_score_label        Spearman between score and the simulated
                              radiologists' mean score (sanity check).

  python bench/dose_monotonicity.py --workdir=/tmp/mdiqa_default \
      [--config=configs/default.py] [--num_slices=40]
"""
import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np
from scipy import stats

import bench_common
import independent_ct_simulator
from mdiqa_jax import checkpointing
from mdiqa_jax import predict
from mdiqa_jax import train
from mdiqa_jax.data import synthetic
from mdiqa_jax.data import synthetic_builder

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'default.py'),
    'Training config, used only when --workdir holds no checkpoint.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (trained here if empty).')
_NUM_SLICES = flags.DEFINE_integer('num_slices', 40, 'Slices scanned at every dose.')
_DOSES = flags.DEFINE_list('doses', ['1.0', '0.75', '0.5', '0.25'], 'Dose fractions.')
_SYNTHETIC = flags.DEFINE_string(
    'synthetic', None, "Synthetic dataset config whose physics and patients are scanned "
    "('clinical', 'challenge'); default: the one config.data.name names.")
_SPLIT = flags.DEFINE_string('split', 'test', 'Synthetic split whose patients are scanned.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results', 'dose_monotonicity.json'),
    'JSON file to write.')


def _has_checkpoint(workdir: str) -> bool:
  try:
    checkpointing.resolve_checkpoint(workdir)
  except FileNotFoundError:
    return False
  return True


def _synthetic_spec(data_name: str) -> synthetic.SyntheticSpec:
  """The spec of --synthetic, or of config.data.name ('ldct_iqa_synthetic/<config>')."""
  specs = {c.name: c.spec for c in synthetic_builder.LdctIqaSynthetic.BUILDER_CONFIGS}
  dataset, _, name = data_name.partition('/')
  name = _SYNTHETIC.value or (name or synthetic_builder.LdctIqaSynthetic.DEFAULT_BUILDER_CONFIG_NAME
                              if dataset == 'ldct_iqa_synthetic' else None)
  if name not in specs:
    raise app.UsageError(f'No simulation spec for dataset {data_name!r} (--synthetic={name!r});'
                         f' pass --synthetic with one of {sorted(specs)}.')
  return specs[name]


def _simulate(spec: synthetic.SyntheticSpec, split: str, num_slices: int,
              doses: list[float], folder: str) -> dict[str, dict]:
  """Writes <slice>_<dose>.dcm (HU, PixelSpacing) per scan; returns file -> facts."""
  available = synthetic.split_sizes(spec)[split]
  if num_slices > available:
    raise ValueError(f'--num_slices={num_slices} exceeds the {available} slices of '
                     f'split {split!r}.')
  panel = synthetic.make_panel(spec)
  scans = {}
  for index in range(num_slices):
    patient, slice_index = divmod(index, spec.slices_per_patient)
    drawn = synthetic.sample_degradations(spec, split, patient, slice_index)[0]
    degradations = tuple(synthetic.Degradation(dose, spec.num_views_full, drawn.kernel,
                                               drawn.slice_thickness_mm) for dose in doses)
    for dose, scan in zip(doses, synthetic.simulate_scans(spec, split, patient, slice_index,
                                                           degradations, panel)):
      path = os.path.join(folder, f'{index:04d}_dose{dose:.4f}.dcm')
      independent_ct_simulator.write_ct_dicom(
          path, scan.image_hu, float(scan.example['pixel_mm']),
          description=f'synthetic {split} slice {index}, dose {dose:g}',
          study_key=('dose-monotonicity', str(index)), instance_key=(str(index), f'{dose:g}'))
      scans[path] = {'slice': index, 'dose': dose, 'label': float(scan.example['score'])}
  return scans


def _per_slice_trend(slice_ids: np.ndarray, dose: np.ndarray, values: np.ndarray) -> dict:
  """Within each slice: Spearman(dose, values) (mean, fractions = 1 and > 0)
  and the fraction of one-level dose reductions that lower the value."""
  rhos, steps_falling = [], []
  for i in np.unique(slice_ids):
    slice_dose, slice_values = dose[slice_ids == i], values[slice_ids == i]
    rhos.append(stats.spearmanr(slice_dose, slice_values).statistic)
    by_falling_dose = slice_values[np.argsort(-slice_dose)]  # Full dose first.
    steps_falling.extend(np.diff(by_falling_dose) < 0)
  rhos = np.nan_to_num(np.array(rhos), nan=0.0)  # Constant values over the doses: no trend.
  return {'mean_spearman': float(rhos.mean()),
          'fraction_monotone': float(np.mean(rhos >= 1.0 - 1e-9)),
          'fraction_positive': float(np.mean(rhos > 0)),
          'fraction_steps_falling': float(np.mean(steps_falling))}


def _report(scans: dict[str, dict], rows: list[dict], doses: list[float]) -> dict:
  scores = {row['file']: row['score'] for row in rows}
  table = np.array([(facts['slice'], facts['dose'], facts['label'], scores[path])
                    for path, facts in scans.items()])
  slice_ids, dose, label, score = table.T
  per_slice = {'score': _per_slice_trend(slice_ids, dose, score),
               'label': _per_slice_trend(slice_ids, dose, label)}
  return {
      'num_slices': int(np.unique(slice_ids).size),
      'doses': doses,
      'spearman_score_dose': float(stats.spearmanr(dose, score).statistic),
      'per_slice': per_slice,
      'mean_score_by_dose': {f'{d:g}': float(score[dose == d].mean()) for d in doses},
      'mean_label_by_dose': {f'{d:g}': float(label[dose == d].mean()) for d in doses},
      'spearman_score_label': float(stats.spearmanr(label, score).statistic),
  }


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  workdir = _WORKDIR.value
  started = time.time()
  trained_here = not _has_checkpoint(workdir)
  if trained_here:
    logging.info('No checkpoint in %s: training %s there first.', workdir, _CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, workdir)
  trained_s = time.time() - started
  config, params = predict.load_checkpoint(workdir)
  spec = _synthetic_spec(config.data.name)
  doses = [float(d) for d in _DOSES.value]
  with tempfile.TemporaryDirectory() as folder:
    scans = _simulate(spec, _SPLIT.value, _NUM_SLICES.value, doses, folder)
    rows, failures = predict.predict_paths(config, params, [folder])
    if failures:
      raise RuntimeError(f'Scoring failed: {[str(e) for e in failures]}')
    report = _report(scans, rows, doses)
  report.update({
      'workdir': os.path.abspath(workdir),
      'dataset': config.data.name,
      'split': _SPLIT.value,
      'views': spec.num_views_full,
      'trained_in_this_run': trained_here,
      'train_seconds': trained_s,
      'total_seconds': time.time() - started,
      **bench_common.machine_info(),
  })
  print(json.dumps(report, indent=2))
  bench_common.write_results(_OUTPUT.value, report)


if __name__ == '__main__':
  app.run(main)
