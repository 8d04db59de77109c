"""The semi-supervised pipeline: teachers -> pseudo-labels -> students, resumable.

Each stage is skipped when its output exists (`mdiqa_jax.semi`'s docstring
lists the stages and the workdir layout).
"""
import os
import time
from typing import Any, Callable, Dict, Optional

import jax
import ml_collections

from mdiqa_jax import files
from mdiqa_jax import train
from mdiqa_jax.data import pipeline
from mdiqa_jax.evaluation.report import format_metrics
from mdiqa_jax.semi.config import check_semi
from mdiqa_jax.semi.ensemble import make_pseudo_labels
from mdiqa_jax.semi.records import PROVENANCE_FILE, RESULT_FILE, SELECTION_FILE
from mdiqa_jax.semi.students import student_config, write_student_selection
from mdiqa_jax.semi.teachers import check_teacher_spec, teacher_configs, train_run


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
  check_semi(config.semi)
  workdir = os.path.abspath(workdir)
  shared_dir = os.path.abspath(config.semi.shared_dir or workdir)
  os.makedirs(workdir, exist_ok=True)
  pipeline.prepare_dataset(config.data)
  start = time.time()

  teachers = teacher_configs(config)
  check_teacher_spec(shared_dir, teachers)
  teacher_dirs = []
  for i, teacher in enumerate(teachers):
    teacher_dirs.append(os.path.join(shared_dir, 'teachers', f'teacher_{i}'))
    if train_run(teacher, teacher_dirs[-1], workdir=workdir, stage='teachers',
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
      done = train_run(student_config(config, selection_path, j), student_dir,
                        workdir=workdir, stage='students', train_fn=train_fn)
      if done is None:
        return None
      students.append({'workdir': student_dir, 'test': done['test'],
                       'validation': done['validation'],
                       'selection': files.read_json(summary_path)})
    result['rounds'].append({
        'pseudo_labels': pseudo_dir,
        'pseudo_label_quality': files.read_json(os.path.join(pseudo_dir, PROVENANCE_FILE))[
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
    print(f'student {config.data.test_split}: {format_metrics(last[0]["test"])}',
          flush=True)
  return result
