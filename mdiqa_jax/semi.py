r"""Semi-supervised MD-IQA: teachers -> pseudo-labels -> student, as resumable stages.

  python -m mdiqa_jax.semi --config=configs/semi/hard.py --workdir=DIR \
      [--config.semi.pseudo_weight=0.5 ...] [--stop_after=teachers|pseudo_labels]

Stages (each skipped when its output exists, so rerunning the command after a
crash, a kill or preemption continues where it stopped):
  1. teachers: one training run (mdiqa_jax.train) per seed in
     config.semi.teacher_seeds, each on the whole labeled split or, with
     config.semi.teacher_folds = F >= 2, on all but fold (i mod F). A
     teacher's run resumes from its own checkpoints; it counts as done once
     its done.json exists.
  2. pseudo_labels: every teacher scores the unlabeled split (whole
     slices, as evaluation does); the ensemble's mean score, spread, total std and mean
     distributions, with every teacher's predictions, are written as
     pseudo_labels.npz + provenance.json (teacher checkpoints, configs,
     pseudo-label quality against the split's hidden labels). The directory
     is assembled under a temporary name and renamed into place, so it either
     exists complete or not at all.
  3. students: the labeled split plus the pseudo-labeled slices chosen by
     config.semi.strategy ('hard' | 'soft' | 'confidence', see
     pseudo_labels.py), each pseudo-labeled slice weighted
     config.semi.pseudo_weight in the loss (data/mixture.py). The student
     trains for the same number of steps as a supervised run
     (config.num_train_steps, or num_epochs over the labeled split).
  With config.semi.rounds = R > 1, round r >= 1 repeats stages 2-3 with the
  previous round's students as the teachers.

Workdir layout:
  semi_log.jsonl                      stage events (start / done / skip), one JSON per line
  teachers/teacher_<i>/               training workdirs (+ done.json)        [shared_dir]
  round_0/pseudo_labels/              pseudo_labels.npz, provenance.json     [shared_dir]
  round_<r>/pseudo_labels/            for r >= 1
  round_<r>/student_<j>/              selection.npz, training workdir, done.json
  result.json                         the last round's students' test metrics
Teachers and round-0 pseudo-labels depend only on the teacher settings, so
config.semi.shared_dir can put them in a directory that several configs
(strategies, student seeds) share; it holds teacher_spec.json, and a config
whose teachers differ from it is refused.

Single process: the stages run on one host (training itself may use all its
local devices).
"""
import copy
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import evaluate
from mdiqa_jax import files
from mdiqa_jax import losses
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax import pseudo_labels
from mdiqa_jax import train
from mdiqa_jax.data import mixture
from mdiqa_jax.data import pipeline

STAGES = ('teachers', 'pseudo_labels', 'students')
LOG_FILE = 'semi_log.jsonl'
DONE_FILE = 'done.json'
RESULT_FILE = 'result.json'
PSEUDO_LABELS_FILE = 'pseudo_labels.npz'
PROVENANCE_FILE = 'provenance.json'
SELECTION_FILE = 'selection.npz'
TEACHER_SPEC_FILE = 'teacher_spec.json'


def semi_config() -> ml_collections.ConfigDict:
  """Defaults of config.semi; configs/semi/*.py start from these."""
  semi = ml_collections.ConfigDict()
  semi.teacher_seeds = (1, 2, 3)        # M teachers, one per seed.
  semi.teacher_folds = 0                # F >= 2: teacher i leaves out fold i mod F.
  semi.teacher_num_train_steps = -1     # > 0 overrides config.num_train_steps for teachers.
  semi.shared_dir = ''                  # Teachers + round-0 pseudo-labels ('' = workdir).
  semi.strategy = 'hard'                # 'hard' | 'soft' | 'confidence'.
  semi.pseudo_weight = 1.0              # Loss weight of a pseudo-labeled slice (labeled: 1).
  semi.confidence_measure = 'ensemble_std'  # | 'total_std' (works with one teacher).
  semi.confidence_fraction = 0.5        # Keep floor(fraction * N) most confident slices ...
  semi.confidence_threshold = -1.0      # ... or, when >= 0, those with spread <= threshold.
  semi.rounds = 1                       # > 1: students become the next round's teachers.
  semi.num_students = 1                 # Students per round (seeds config.seed + j).
  return semi


def _check_semi(semi: ml_collections.ConfigDict) -> None:
  if len(semi.teacher_seeds) < 1:
    raise ValueError('config.semi.teacher_seeds must name at least one teacher seed.')
  if semi.teacher_folds == 1 or semi.teacher_folds < 0:
    raise ValueError(f'config.semi.teacher_folds must be 0 (no folds) or >= 2, got '
                     f'{semi.teacher_folds}.')
  if semi.strategy not in pseudo_labels.STRATEGIES:
    raise ValueError(f'config.semi.strategy={semi.strategy!r}; expected one of '
                     f'{pseudo_labels.STRATEGIES}.')
  for field in ('rounds', 'num_students'):
    if semi[field] < 1:
      raise ValueError(f'config.semi.{field} must be >= 1, got {semi[field]}.')


# --- Files ----------------------------------------------------------------------


def _read_json(path: str) -> Any:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def log_event(workdir: str, stage: str, event: str, **details: Any) -> None:
  """Appends {'stage', 'event', 'time', ...} to <workdir>/semi_log.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  record = dict(details, stage=stage, event=event, time=time.time())
  with open(os.path.join(workdir, LOG_FILE), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
  logging.info('semi %s: %s %s', stage, event, details.get('path', ''))


def read_log(workdir: str) -> List[Dict[str, Any]]:
  """The stage events of a workdir, oldest first."""
  path = os.path.join(workdir, LOG_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def write_pseudo_label_dataset(output_dir: str, arrays: Dict[str, np.ndarray],
                               provenance: Dict[str, Any]) -> None:
  """Writes pseudo_labels.npz + provenance.json as one directory, atomically.

  Both files are written into `<output_dir>.partial`, which is then renamed to
  output_dir: a crash at any point (here: an array or a provenance value that
  cannot be written) leaves no output_dir. A `.partial` left by a killed
  process is removed by the next call.
  """
  if os.path.exists(output_dir):
    raise FileExistsError(f'{output_dir} exists; pseudo-labels are never overwritten.')
  partial = output_dir + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    np.savez(os.path.join(partial, PSEUDO_LABELS_FILE), **arrays)
    with open(os.path.join(partial, PROVENANCE_FILE), 'w', encoding='utf-8') as f:
      json.dump(provenance, f, indent=2, sort_keys=True)
    os.replace(partial, output_dir)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


def load_pseudo_label_dataset(directory: str) -> Dict[str, np.ndarray]:
  """The arrays of a pseudo-label dataset (`write_pseudo_label_dataset`)."""
  with np.load(os.path.join(directory, PSEUDO_LABELS_FILE)) as data:
    return {key: data[key] for key in data.files}


# --- Stage 1: teachers ----------------------------------------------------------


def fold_complement_split(split: str, num_examples: int, fold: int, num_folds: int) -> str:
  """TFDS split string of `split` without fold `fold` of `num_folds` contiguous folds."""
  if '[' in split or '+' in split:
    raise ValueError(f'config.semi.teacher_folds needs a plain config.data.train_split, '
                     f'got {split!r}.')
  start, stop = fold * num_examples // num_folds, (fold + 1) * num_examples // num_folds
  parts = ([f'{split}[:{start}]'] if start else []) + (
      [f'{split}[{stop}:]'] if stop < num_examples else [])
  return '+'.join(parts)


def teacher_configs(config: ml_collections.ConfigDict) -> List[ml_collections.ConfigDict]:
  """Training configs of the round-0 teachers: config without `semi`, per seed/fold."""
  semi = config.semi
  base = _without_semi(config)
  if semi.teacher_num_train_steps > 0:
    base.num_train_steps = semi.teacher_num_train_steps
  num_labeled = (pipeline.num_examples(base.data, base.data.train_split)
                 if semi.teacher_folds else 0)
  configs = []
  for i, seed in enumerate(semi.teacher_seeds):
    teacher = copy.deepcopy(base)
    teacher.seed = int(seed)
    if semi.teacher_folds:
      teacher.data.train_split = fold_complement_split(
          base.data.train_split, num_labeled, i % semi.teacher_folds, semi.teacher_folds)
    configs.append(teacher)
  return configs


def _without_semi(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  plain = ml_collections.ConfigDict(config.to_dict())
  with plain.unlocked():
    if 'semi' in plain:
      del plain['semi']
  return plain


def _config_json(config: ml_collections.ConfigDict) -> Any:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _train_run(config: ml_collections.ConfigDict, run_dir: str, *, workdir: str,
               stage: str, train_fn: Callable) -> Optional[Dict[str, Any]]:
  """Trains unless done; returns done.json's content, or None when preempted."""
  done_path = os.path.join(run_dir, DONE_FILE)
  if os.path.exists(done_path):
    log_event(workdir, stage, 'skip', path=run_dir)
    return _read_json(done_path)
  log_event(workdir, stage, 'start', path=run_dir)
  start = time.time()
  result = train_fn(config, run_dir)
  if result['preempted']:
    log_event(workdir, stage, 'preempted', path=run_dir)
    return None
  done = {'test': result['test'], 'validation': result['validation'],
          'step': result['step'], 'wall_seconds': time.time() - start}
  files.write_json_atomically(done_path, done)
  log_event(workdir, stage, 'done', path=run_dir, wall_seconds=done['wall_seconds'])
  return done


def _check_teacher_spec(shared_dir: str, configs: Sequence[ml_collections.ConfigDict]):
  spec = [_config_json(c) for c in configs]
  path = os.path.join(shared_dir, TEACHER_SPEC_FILE)
  if os.path.exists(path):
    if _read_json(path) != spec:
      raise ValueError(
          f'{path} records other teacher settings than this config; config.semi.shared_dir '
          'may only be shared by configs with identical teachers (model, data, schedule, '
          'teacher_seeds, teacher_folds). Choose another shared_dir.')
  else:
    os.makedirs(shared_dir, exist_ok=True)
    files.write_json_atomically(path, spec)


# --- Stage 2: pseudo-labels -----------------------------------------------------


def predict_with_distributions(config: ml_collections.ConfigDict, params: Any,
                               split: str) -> Dict[str, np.ndarray]:
  """Scores every slice of `split` whole, as evaluation does (`evaluate.predict_split`).

  Returns numpy arrays ordered by position in the split: 'index' (N,),
  'label' (N,) (the split's stored score), 'score' (N,), 'uncertainty' (N,)
  and, for distribution heads, 'log_probs' (N, K, num_bins): the slice-level
  distributions of the K heads.
  """
  predictions = evaluate.predict_split(config, params, split)
  return {key: predictions[key] for key in ('index', 'label', 'score', 'uncertainty',
                                            'log_probs') if key in predictions}


def pseudo_label_arrays(teacher_predictions: Sequence[Dict[str, np.ndarray]]
                        ) -> Dict[str, np.ndarray]:
  """Stacks M teachers' predictions and adds the ensemble statistics.

  Returns 'index' (N,), 'teacher_scores' / 'teacher_uncertainty' (M, N),
  'score' (ensemble mean), 'spread' (ensemble std), 'total_std' (N,),
  'hidden_label' (N,) (the split's stored labels: for measuring pseudo-label
  quality only, never read by training), and with distribution heads
  'teacher_log_probs' (M, N, K, bins) and 'target_probs' (N, K, bins).
  """
  index = teacher_predictions[0]['index']
  for prediction in teacher_predictions[1:]:
    if not np.array_equal(prediction['index'], index):
      raise ValueError('Teachers predicted different examples of the unlabeled split.')
  scores = np.stack([p['score'] for p in teacher_predictions])
  uncertainty = np.stack([p['uncertainty'] for p in teacher_predictions])
  arrays = {
      'index': index.astype(np.int64),
      'teacher_scores': scores,
      'teacher_uncertainty': uncertainty,
      'score': pseudo_labels.ensemble_mean_score(scores),
      'spread': pseudo_labels.ensemble_spread(scores),
      'total_std': pseudo_labels.total_std(scores, uncertainty),
      'hidden_label': teacher_predictions[0]['label'],
  }
  if all('log_probs' in p for p in teacher_predictions):
    arrays['teacher_log_probs'] = np.stack([p['log_probs'] for p in teacher_predictions])
    arrays['target_probs'] = pseudo_labels.mean_distribution(arrays['teacher_log_probs'])
  return arrays


def make_pseudo_labels(teacher_dirs: Sequence[str], output_dir: str, *, workdir: str,
                       provenance_extra: Optional[Dict[str, Any]] = None) -> None:
  """Stage 2: every teacher predicts the unlabeled split; writes the dataset."""
  if os.path.exists(os.path.join(output_dir, PROVENANCE_FILE)):
    log_event(workdir, 'pseudo_labels', 'skip', path=output_dir)
    return
  log_event(workdir, 'pseudo_labels', 'start', path=output_dir)
  start = time.time()
  predictions, teachers = [], []
  for teacher_dir in teacher_dirs:
    config, params = checkpointing.load_for_inference(teacher_dir)
    split = config.data.unlabeled_split
    predictions.append(predict_with_distributions(config, params, split))
    _, step = checkpointing.resolve_checkpoint(teacher_dir)
    teachers.append({
        'checkpoint': os.path.join(os.path.abspath(teacher_dir), checkpointing.CHECKPOINT_DIR,
                                   str(step)),
        'config': _config_json(config),
        'unlabeled_metrics': metrics_lib.all_metrics(predictions[-1]['score'],
                                                     predictions[-1]['label']),
    })
  arrays = pseudo_label_arrays(predictions)
  provenance = dict(provenance_extra or {})
  provenance.update(
      dataset=config.data.name, split=split, num_examples=int(arrays['index'].size),
      teachers=teachers, created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      ensemble_metrics_vs_hidden_labels=metrics_lib.all_metrics(arrays['score'],
                                                                arrays['hidden_label']),
      mae_vs_hidden_labels=float(np.mean(np.abs(arrays['score'] - arrays['hidden_label']))))
  write_pseudo_label_dataset(output_dir, arrays, provenance)
  log_event(workdir, 'pseudo_labels', 'done', path=output_dir,
            wall_seconds=time.time() - start)


# --- Stage 3: students ----------------------------------------------------------


def labeled_gaussian_targets(config: ml_collections.ConfigDict) -> np.ndarray:
  """(L, K, num_bins) Gaussian targets of the labeled split's labels (config.loss.sigmas)."""
  source = pipeline.open_source(config.data, config.data.train_split)
  scores = np.asarray([source[i]['score'] for i in range(len(source))], np.float32)
  head = config.model.head
  centers = losses.bin_centers(head.score_min, head.score_max, head.bin_width)
  return np.stack([np.asarray(losses.gaussian_targets(scores, sigma, centers))
                   for sigma in config.loss.sigmas], axis=1)


def write_student_selection(config: ml_collections.ConfigDict, pseudo_dir: str,
                            path: str) -> Dict[str, Any]:
  """Applies config.semi's strategy to a pseudo-label dataset; writes the selection.

  Returns a summary: strategy, number kept, and the kept pseudo-labels'
  metrics against the hidden labels.
  """
  semi = config.semi
  data = load_pseudo_label_dataset(pseudo_dir)
  threshold = semi.confidence_threshold if semi.confidence_threshold >= 0 else None
  selection = pseudo_labels.select_for_student(
      data['teacher_scores'], data['teacher_uncertainty'], data.get('teacher_log_probs'),
      strategy=semi.strategy, weight=semi.pseudo_weight,
      confidence_measure=semi.confidence_measure,
      fraction=None if threshold is not None else semi.confidence_fraction,
      threshold=threshold)
  # Positions in the pseudo-label arrays -> positions in the unlabeled split.
  selection['index'] = data['index'][selection['index']]
  labeled_targets = (labeled_gaussian_targets(config) if 'target_probs' in selection
                     else None)
  mixture.write_selection(path, selection, labeled_targets)
  kept_labels = data['hidden_label'][np.searchsorted(data['index'], selection['index'])]
  summary = {'strategy': semi.strategy, 'num_pseudo_labeled': int(data['index'].size),
             'num_kept': int(selection['index'].size),
             'kept_mae_vs_hidden_labels': float(np.mean(np.abs(selection['score'] -
                                                                kept_labels)))
             if selection['index'].size else None}
  if selection['index'].size > 2:
    summary['kept_metrics_vs_hidden_labels'] = metrics_lib.all_metrics(selection['score'],
                                                                       kept_labels)
  return summary


def student_config(config: ml_collections.ConfigDict, selection_path: str,
                   student_index: int) -> ml_collections.ConfigDict:
  """The student's training config: config + the mixture, seed config.seed + j."""
  student = ml_collections.ConfigDict(config.to_dict())
  with student.unlocked():
    student.data.pseudo_labels = os.path.abspath(selection_path)
  student.seed = int(config.seed) + student_index
  return student


# --- The pipeline ---------------------------------------------------------------


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, *,
                 stop_after: Optional[str] = None,
                 train_fn: Callable = train.train_and_evaluate) -> Optional[Dict[str, Any]]:
  """Runs (or resumes) every stage; returns result.json's content.

  Args:
    config: a config with a `semi` field (configs/semi/*.py).
    workdir: the pipeline's directory (module docstring).
    stop_after: 'teachers' or 'pseudo_labels' ends after that stage of round
      0 (None runs everything).
    train_fn: train_and_evaluate(config, workdir) -> result dict.
  Returns:
    The result (also written to <workdir>/result.json), or None when stopped
    early or preempted (rerun to continue).
  """
  if 'semi' not in config:
    raise ValueError('The config has no `semi` field; start from mdiqa_jax.semi.semi_config() '
                     '(configs/semi/*.py), or train a supervised model with mdiqa_jax.train.')
  if stop_after not in (None, 'teachers', 'pseudo_labels'):
    raise ValueError(f"stop_after={stop_after!r}; expected 'teachers' or 'pseudo_labels'.")
  if jax.process_count() > 1:
    raise ValueError('mdiqa_jax.semi runs on a single process.')
  _check_semi(config.semi)
  workdir = os.path.abspath(workdir)
  shared_dir = os.path.abspath(config.semi.shared_dir or workdir)
  os.makedirs(workdir, exist_ok=True)
  pipeline.prepare_dataset(config.data)
  start = time.time()

  teachers = teacher_configs(config)
  _check_teacher_spec(shared_dir, teachers)
  teacher_dirs = []
  for i, teacher in enumerate(teachers):
    teacher_dirs.append(os.path.join(shared_dir, 'teachers', f'teacher_{i}'))
    if _train_run(teacher, teacher_dirs[-1], workdir=workdir, stage='teachers',
                  train_fn=train_fn) is None:
      return None
  if stop_after == 'teachers':
    return None

  result = {'rounds': []}
  for round_index in range(config.semi.rounds):
    round_dir = os.path.join(shared_dir if round_index == 0 else workdir,
                             f'round_{round_index}')
    pseudo_dir = os.path.join(round_dir, 'pseudo_labels')
    os.makedirs(round_dir, exist_ok=True)
    make_pseudo_labels(teacher_dirs, pseudo_dir, workdir=workdir,
                       provenance_extra={'round': round_index})
    if stop_after == 'pseudo_labels':
      return None
    students = []
    for j in range(config.semi.num_students):
      student_dir = os.path.join(workdir, f'round_{round_index}', f'student_{j}')
      os.makedirs(student_dir, exist_ok=True)
      selection_path = os.path.join(student_dir, SELECTION_FILE)
      summary_path = os.path.join(student_dir, 'selection_summary.json')
      if not os.path.exists(summary_path):
        files.write_json_atomically(
            summary_path, write_student_selection(config, pseudo_dir, selection_path))
      done = _train_run(student_config(config, selection_path, j), student_dir,
                        workdir=workdir, stage='students', train_fn=train_fn)
      if done is None:
        return None
      students.append({'workdir': student_dir, 'test': done['test'],
                       'validation': done['validation'],
                       'selection': _read_json(summary_path)})
    result['rounds'].append({
        'pseudo_labels': pseudo_dir,
        'pseudo_label_quality': _read_json(os.path.join(pseudo_dir, PROVENANCE_FILE))[
            'ensemble_metrics_vs_hidden_labels'],
        'students': students})
    teacher_dirs = [student['workdir'] for student in students]

  last = result['rounds'][-1]['students']
  result.update(
      test=last[0]['test'], student_workdir=last[0]['workdir'],
      test_predictions=os.path.join(last[0]['workdir'],
                                    f'eval_{config.data.test_split}', 'predictions.csv'),
      teacher_workdirs=[os.path.join(shared_dir, 'teachers', f'teacher_{i}')
                        for i in range(len(teachers))],
      wall_seconds_this_call=time.time() - start)
  files.write_json_atomically(os.path.join(workdir, RESULT_FILE), result)
  if last[0]['test']:
    print(f'student {config.data.test_split}: {evaluate.format_metrics(last[0]["test"])}',
          flush=True)
  return result


def _define_flags() -> Dict[str, Any]:
  return {
      'config': config_flags.DEFINE_config_file('config', None,
                                                'Config file (configs/semi/*.py).',
                                                lock_config=True),
      'workdir': flags.DEFINE_string('workdir', None, 'The pipeline directory.'),
      'stop_after': flags.DEFINE_enum('stop_after', None, ['teachers', 'pseudo_labels'],
                                      'End after this stage of round 0.'),
  }


def main(argv, command_flags: Dict[str, Any]):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  values = {name: holder.value for name, holder in command_flags.items()}
  if values['config'] is None or values['workdir'] is None:
    raise app.UsageError('Give --config=configs/semi/NAME.py and --workdir=DIR.')
  checkpointing.quiet_library_logging()
  config = values['config']
  config_validation.validate_config(config)
  try:
    _check_semi(config.semi)
  except ValueError as e:
    raise config_validation.ConfigError(str(e)) from e
  with checkpointing.PreemptionWatcher():
    try:
      run_pipeline(config, values['workdir'], stop_after=values['stop_after'])
    except checkpointing.Preemption:
      logging.warning('SIGTERM: stopped; every stage writes atomically. Rerun the same '
                      'command to continue.')


def run():
  """Console entry point `mdiqa-semi`."""
  command_errors.run(functools.partial(main, command_flags=_define_flags()), 'mdiqa-semi')


if __name__ == '__main__':
  run()
