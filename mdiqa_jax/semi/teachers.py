"""Stage 1: the teachers' training configs and runs (one per seed, or per fold)."""
import copy
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import ml_collections

from mdiqa_jax import config_base
from mdiqa_jax import files
from mdiqa_jax.data import pipeline
from mdiqa_jax.semi.records import DONE_FILE, TEACHER_SPEC_FILE, log_event


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


def train_run(config: ml_collections.ConfigDict, run_dir: str, *, workdir: str,
               stage: str, train_fn: Callable) -> Optional[Dict[str, Any]]:
  """Trains unless done; returns done.json's content, or None when preempted."""
  done_path = os.path.join(run_dir, DONE_FILE)
  if os.path.exists(done_path):
    log_event(workdir, stage, 'skip', path=run_dir)
    return files.read_json(done_path)
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


def check_teacher_spec(shared_dir: str, configs: Sequence[ml_collections.ConfigDict]):
  spec = [config_base.config_json(c) for c in configs]
  path = os.path.join(shared_dir, TEACHER_SPEC_FILE)
  if os.path.exists(path):
    if files.read_json(path) != spec:
      raise ValueError(
          f'{path} records other teacher settings than this config; config.semi.shared_dir '
          'may only be shared by configs with identical teachers (model, data, schedule, '
          'teacher_seeds, teacher_folds). Choose another shared_dir.')
  else:
    os.makedirs(shared_dir, exist_ok=True)
    files.write_json_atomically(path, spec)
