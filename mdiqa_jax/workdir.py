"""A training workdir's layout: its config, its checkpoint steps, which step readers use.

  <workdir>/config.json              the run's full config (JSON)
  <workdir>/train.lock               held (flock) by the training writing here
  <workdir>/checkpoints/<step>/      one Orbax checkpoint per saved step
      (state/, data/, checksums/: `checkpointing`; metrics/: validation metrics)
  <workdir>/damaged_checkpoints/<step>/   steps a resuming training set aside
Readers (predict, evaluate, export) rank the steps by validation SROCC
(`candidate_steps`) and fall back past those that do not restore.
"""
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import ml_collections

from mdiqa_jax import command_errors
from mdiqa_jax import config_base
from mdiqa_jax import files

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
BEST_METRIC = 'srocc'
METRICS_FILE = os.path.join('metrics', 'metrics')


class CheckpointError(command_errors.UserError, RuntimeError):
  """A path holds no checkpoint that restores; the message names it and why."""


class DamagedStepError(CheckpointError):
  """One saved step does not restore or does not match its checksums."""

  def __init__(self, step_dir: str, reason: str):
    super().__init__(f'{step_dir}: {reason}')
    self.step_dir = step_dir
    self.reason = reason


def absolute_path(path: str) -> str:
  """A local path made absolute (Orbax refuses relative ones); URLs (gs://...) unchanged."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(path)


def step_dir(workdir: str, step: int) -> str:
  """<workdir>/checkpoints/<step>."""
  return os.path.join(absolute_path(workdir), CHECKPOINT_DIR, str(step))


def best_value(metrics: Dict[str, float]) -> float:
  """A step's rank: its validation SROCC, -inf without one (or NaN)."""
  value = metrics.get(BEST_METRIC) if metrics else None
  # A constant prediction has no correlation (NaN); it ranks below any value.
  return float(value) if value is not None and np.isfinite(value) else -np.inf


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the run's config as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  files.write_text_atomically(os.path.join(workdir, CONFIG_FILE),
                              config.to_json_best_effort(indent=2, sort_keys=True))


def _read_config_values(workdir: str) -> Dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise FileNotFoundError(
        f'{path}: cannot read the run config ({e}); is {workdir!r} a training workdir '
        '(python -m mdiqa_jax.train --workdir=...)?') from e


def config_from_values(values: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A run config from its JSON values (config.json, a bundled model's record):
  lists become tuples, older field names are translated (`config_base.upgrade`)."""
  return ml_collections.ConfigDict(lists_to_tuples(config_base.upgrade(values)))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads <workdir>/config.json written by `save_config` (`config_from_values`)."""
  return config_from_values(_read_config_values(workdir))


def check_resumable(workdir: str) -> None:
  """Refuses to resume a workdir whose config.json predates named components.

  Its optimiser state has another layout (learning-rate groups 'backbone' /
  'head'), so no step would restore, and every one would be set aside;
  prediction, evaluation and export still read such a workdir.
  Raises:
    CheckpointError: naming the workdir.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path) and 'head_type' in _read_config_values(workdir).get('model', {}):
    raise CheckpointError(
        f'{workdir}: trained by an older mdiqa_jax (config.json has model.head_type); its '
        'optimiser state cannot be resumed. Train into a new --workdir (predict, evaluate '
        'and export still read this one).')


def lists_to_tuples(value: Any) -> Any:
  """JSON values with every list a tuple (configs use tuples: sigmas, depths)."""
  if isinstance(value, dict):
    return {k: lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(lists_to_tuples(v) for v in value)
  return value


def list_steps(workdir: str) -> List[int]:
  """Saved steps of a workdir, ascending (complete step directories only)."""
  directory = os.path.join(absolute_path(workdir), CHECKPOINT_DIR)
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  return sorted(int(name) for name in names
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def read_step_record(step_dir: str, name: str, read: Callable[[], Any]) -> Dict[str, Any]:
  """`read()` of a step's record `name` (a JSON object), damage named.

  Raises:
    DamagedStepError: `read` failed (other than FileNotFoundError, which passes
      through) or gave no JSON object.
  """
  try:
    value = read()
  except FileNotFoundError:
    raise
  except Exception as e:  # Bad JSON, bad UTF-8, Orbax: a garbled record is damage.
    raise DamagedStepError(step_dir, f'{name} cannot be read: '
                           f'{command_errors.one_line(e)}') from e
  if not isinstance(value, dict):
    raise DamagedStepError(step_dir, f'{name} holds {type(value).__name__}, '
                           'expected a JSON object.')
  return value


def read_step_metrics(step_dir: str) -> Dict[str, Any]:
  """A step's validation metrics ({} when it has none).

  Raises:
    DamagedStepError: when the metrics file exists but is not a JSON object.
  """
  path = os.path.join(step_dir, METRICS_FILE)
  try:
    return read_step_record(step_dir, METRICS_FILE, lambda: files.read_json(path))
  except FileNotFoundError:
    return {}


def split_checkpoint_path(path: str) -> Tuple[str, Optional[int]]:
  """(workdir, step) for a step directory, (workdir, None) for a workdir."""
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit():
    return os.path.dirname(parent), int(os.path.basename(path))
  if not os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    raise FileNotFoundError(
        f'{path}: neither a training workdir (no {CHECKPOINT_DIR}/ inside) nor a step '
        f'directory <workdir>/{CHECKPOINT_DIR}/<step>.')
  return path, None


def candidate_steps(workdir: str) -> Tuple[List[int], Dict[int, str]]:
  """Steps in the order readers try them, and the steps whose metrics are damaged.

  Order: highest validation SROCC first; ties (and steps without validation)
  newest first, so a workdir without validation gives its latest step first.
  Returns:
    (steps, damaged): damaged maps a step to why its metrics cannot be read;
    those steps are left out of `steps`.
  """
  ranked, damaged = [], {}
  for step in list_steps(workdir):
    try:
      ranked.append((best_value(read_step_metrics(step_dir(workdir, step))), step))
    except DamagedStepError as error:
      damaged[step] = error.reason
  return [step for _, step in sorted(ranked, reverse=True)], damaged


def resolve_checkpoint(path: str) -> Tuple[str, int]:
  """Workdir or step directory -> (workdir, step).

  A workdir gives its best step by validation SROCC (the latest when no step
  has validation metrics; steps whose metrics do not parse are skipped);
  `<workdir>/checkpoints/<step>` gives that step. `load_inference_checkpoint`
  also falls back past steps that do not restore.
  """
  workdir, step = split_checkpoint_path(path)
  if step is not None:
    return workdir, step
  steps, _ = candidate_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'{workdir}: the workdir holds no complete checkpoint.')
  return workdir, steps[0]
