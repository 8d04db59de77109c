"""Checkpoints: Orbax CheckpointManager, preemption, damage, the workdir lock, inference.

Workdir layout:
  <workdir>/config.json              the run's full config (JSON)
  <workdir>/train.lock               held (flock) by the training writing here
  <workdir>/checkpoints/<step>/      one Orbax checkpoint per saved step:
      state/      TrainState (params, opt_state, ema_params, step, rng)
      data/       the training iterator position, one JSON per host
      checksums/  SHA-256 of each TrainState field's arrays, as saved
      metrics/    validation metrics of that step, when it was evaluated
  <workdir>/damaged_checkpoints/<step>/   steps a resuming training set aside

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save (SIGKILL, power loss) leaves no partial
step: the next run ignores and deletes the temporary directory and resumes
from the last complete step. Kept: the `keep_last` most recent steps plus the
`keep_best` steps of highest validation SROCC.

Damage after the fact (a cut, zeroed or overwritten data file, a flipped bit,
a deleted or garbled file) is caught when a step is restored: Orbax and
TensorStore fail on what they cannot parse, and the restored arrays are
compared with the step's checksums, which catches values that changed
silently. A step that does not restore is reported in one log line naming
the step and the file or array, and the previous step is used instead: a
resuming training moves the step to damaged_checkpoints/ (so that the run can
save that step again), prediction, evaluation and export leave the workdir
as it is and load the next step in their order. A step directory named
explicitly is used or refused, never replaced. A metrics file that does not
parse marks only its own step as damaged.

One writer per workdir: training holds an exclusive `fcntl.flock` on
<workdir>/train.lock while it runs (`workdir_lock`); a second training on the
same workdir stops at once, naming the process that holds it. The kernel
releases the lock when the holder exits, however it exits (kill -9 too).
Readers (predict, evaluate, export) take no lock.
"""
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from absl import logging as absl_logging
from etils import epath
from flax import traverse_util
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mdiqa_jax import command_errors
from mdiqa_jax import files
from mdiqa_jax import models
from mdiqa_jax import train_step

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'
CONFIG_FILE = 'config.json'
LOCK_FILE = 'train.lock'
BEST_METRIC = 'srocc'
STATE_ITEM = 'state'
DATA_ITEM = 'data'
CHECKSUM_ITEM = 'checksums'
METRICS_FILE = os.path.join('metrics', 'metrics')
_ITEM_NAMES = (STATE_ITEM, DATA_ITEM, CHECKSUM_ITEM)
# Error messages list at most this many parameter names, then a count of the rest.
_MAX_LISTED_NAMES = 20


class CheckpointError(command_errors.UserError, RuntimeError):
  """A path holds no checkpoint that restores; the message names it and why."""


class DamagedStepError(CheckpointError):
  """One saved step does not restore or does not match its checksums."""

  def __init__(self, step_dir: str, reason: str):
    super().__init__(f'{step_dir}: {reason}')
    self.step_dir = step_dir
    self.reason = reason


class ParamsMismatchError(command_errors.UserError, ValueError):
  """The saved parameters do not fit the model of the run config (not damage)."""


class WorkdirLockedError(command_errors.UserError, RuntimeError):
  """Another training holds the workdir's lock."""


def _best_value(metrics: Dict[str, float]) -> float:
  value = metrics.get(BEST_METRIC) if metrics else None
  # A constant prediction has no correlation (NaN); it ranks below any value.
  return float(value) if value is not None and np.isfinite(value) else -np.inf


def absolute_path(path: str) -> str:
  """A local path made absolute (Orbax refuses relative ones); URLs (gs://...) unchanged."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(path)


def create_manager(workdir: str, *, keep_last: int, keep_best: int,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """CheckpointManager over <workdir>/checkpoints keeping last N + best-k.

  The writer's entry point: steps whose metrics file does not parse (which
  would make Orbax fail on every step) are first moved to damaged_checkpoints/.
  Args:
    workdir: run directory (local path or any etils.epath path).
    keep_last: most recent checkpoints kept, >= 1.
    keep_best: checkpoints of highest validation SROCC kept besides those, >= 0.
    async_save: write in a background thread (training continues).
  """
  if keep_last < 1:
    raise ValueError(f'config.keep_checkpoints must be >= 1, got {keep_last}.')
  if keep_best < 0:
    raise ValueError(f'config.keep_best must be >= 0, got {keep_best}.')
  workdir = absolute_path(workdir)
  for step in list_steps(workdir):
    try:
      read_step_metrics(_step_dir(workdir, step))
    except DamagedStepError as error:
      set_aside(workdir, step, error.reason)
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep_last),
      checkpoint_managers.BestN(get_metric_fn=_best_value, n=keep_best,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=_best_value, best_mode='max',
      cleanup_tmp_directories=True, enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), options=options,
                               item_names=_ITEM_NAMES)


def _host_array(leaf: Any) -> np.ndarray:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    leaf = leaf.addressable_data(0)  # Replicated: every host holds the whole value.
  return np.ascontiguousarray(jax.device_get(leaf))


def tree_checksum(tree: Any) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (host copies)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = _host_array(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|'.encode())
    digest.update(array.reshape(-1).view(np.uint8).data)
  return digest.hexdigest()


def _fields(state: Any) -> Dict[str, Any]:
  """Top-level fields of a TrainState (a dataclass) or of a dict."""
  if dataclasses.is_dataclass(state):
    return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
  if isinstance(state, dict):
    return dict(state)
  return {'': state}


def state_checksums(state: Any) -> Dict[str, str]:
  """{field: `tree_checksum`} of each top-level field of `state`."""
  return {name: tree_checksum(value) for name, value in _fields(state).items()}


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Optional[grain.DatasetIterator] = None,
         metrics: Optional[Dict[str, float]] = None) -> bool:
  """Saves `state` (global replicated arrays), its checksums and the iterator position.

  Returns False (and writes nothing) when `step` is already saved.
  """
  if step in manager.all_steps():
    return False
  items = {STATE_ITEM: ocp.args.PyTreeSave(state),
           CHECKSUM_ITEM: ocp.args.JsonSave(state_checksums(state))}
  if data_iterator is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
  # Steps without validation get empty metrics: they rank last among the best
  # (ties go to the latest step) and Orbax does not warn about missing metrics.
  metrics = {k: float(v) for k, v in (metrics or {}).items()}
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def _step_dir(workdir: str, step: int) -> str:
  return os.path.join(absolute_path(workdir), CHECKPOINT_DIR, str(step))


def _saved_checksums(step_dir: str) -> Optional[Dict[str, str]]:
  """The checksums saved with a step; None for steps saved before they existed."""
  path = epath.Path(step_dir) / CHECKSUM_ITEM
  if not path.exists():
    return None
  try:
    saved = ocp.JsonCheckpointHandler().restore(path)
  except Exception as e:  # A garbled record is damage like any other.
    raise DamagedStepError(step_dir, f'{CHECKSUM_ITEM}/ cannot be read: '
                           f'{command_errors.one_line(e)}') from e
  if not isinstance(saved, dict):
    raise DamagedStepError(step_dir, f'{CHECKSUM_ITEM}/ holds {type(saved).__name__}, '
                           'expected a JSON object.')
  return saved


def verify_checksums(step_dir: str, fields: Dict[str, Any]) -> None:
  """Compares restored fields ({name: pytree}) with the checksums saved with the step.

  Raises:
    DamagedStepError: naming the step and the fields whose arrays differ.
  """
  saved = _saved_checksums(step_dir)
  if saved is None:
    return
  differing = [name for name, value in fields.items()
               if name not in saved or saved[name] != tree_checksum(value)]
  if differing:
    raise DamagedStepError(
        step_dir, f'{STATE_ITEM}/: the restored {", ".join(differing)} differ from the '
        f'checksums saved with the step (a data file changed after it was written).')


_ARRAY_PATH = re.compile(r"'path': '([^'/][^']*?)/?'")
# TensorStore appends its whole JSON spec to its errors.
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec=.*\]", re.DOTALL)


def _failure_reason(step_dir: str, error: BaseException) -> str:
  """One line saying which file or array of a step failed, and how."""
  if isinstance(error, DamagedStepError):
    return error.reason
  text = str(error)
  if 'error while reading array' in text:
    arrays = _ARRAY_PATH.findall(text)
    return (f'{STATE_ITEM}/: array {arrays[-1] if arrays else "?"} cannot be read '
            '(a truncated or corrupt data file)')
  text = _TENSORSTORE_SPEC.sub('', text).replace(f'{step_dir}{os.sep}', '')
  text = text.replace(step_dir, '.')
  return f'{type(error).__name__}: {command_errors.one_line(text)}'


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Optional[grain.DatasetIterator] = None) -> Any:
  """Restores the state of `step` into the layout of `abstract_state`, verified.

  With `data_iterator`, also moves it to the saved position (in place).
  Raises:
    ParamsMismatchError: naming the step directory, when the saved parameters
      do not fit `abstract_state.params` (the run's model config was changed).
    DamagedStepError: when the step does not restore or its arrays differ
      from its checksums.
  """
  step_dir = os.path.join(os.fspath(manager.directory), str(step))
  try:
    check_saved_params_fit(step_dir, 'params', abstract_state.params)
    items = {STATE_ITEM: ocp.args.PyTreeRestore(
        abstract_state,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
    if data_iterator is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]
    verify_checksums(step_dir, _fields(state))
  except ParamsMismatchError:
    raise
  except Exception as e:  # Orbax, TensorStore and grain raise many types.
    raise DamagedStepError(step_dir, _failure_reason(step_dir, e)) from e
  return state


def set_aside(workdir: str, step: int, reason: str) -> str:
  """Moves a damaged step to <workdir>/damaged_checkpoints/ (process 0); returns where."""
  source = _step_dir(workdir, step)
  target = os.path.join(absolute_path(workdir), DAMAGED_DIR, str(step))
  suffix = 0
  while os.path.exists(target if not suffix else f'{target}.{suffix}'):
    suffix += 1
  target = target if not suffix else f'{target}.{suffix}'
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(source, target)
    absl_logging.warning('Checkpoint step %d does not restore (%s); moved it to %s.',
                         step, reason, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'mdiqa_jax: set aside step {step}')
  return target


def restore_newest_intact(manager: ocp.CheckpointManager, workdir: str, abstract_state: Any,
                          data_iterator: Optional[grain.DatasetIterator] = None
                          ) -> Tuple[int, Optional[Any]]:
  """(step, state) of the newest step that restores; (0, None) when none does.

  Each step that does not restore is logged and moved aside (`set_aside`),
  so that the run saves that step again when it gets there.
  Raises:
    ParamsMismatchError: the saved parameters do not fit the model (no step
      is moved: the config, not the checkpoint, is wrong).
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore(manager, step, abstract_state, data_iterator)
    except DamagedStepError as error:
      set_aside(workdir, step, error.reason)
      manager.reload()
  return 0, None


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the run's config as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  files.write_text_atomically(os.path.join(workdir, CONFIG_FILE),
                              config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads <workdir>/config.json written by `save_config`."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      values = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise FileNotFoundError(
        f'{path}: cannot read the run config ({e}); is {workdir!r} a training workdir '
        '(python -m mdiqa_jax.train --workdir=...)?') from e
  return ml_collections.ConfigDict(_lists_to_tuples(values))


def _lists_to_tuples(value: Any) -> Any:
  # JSON has no tuples; configs use tuples for fixed-length fields (sigmas, depths).
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
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


def read_step_metrics(step_dir: str) -> Dict[str, Any]:
  """A step's validation metrics ({} when it has none).

  Raises:
    DamagedStepError: when the metrics file exists but is not a JSON object.
  """
  path = os.path.join(step_dir, METRICS_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      metrics = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8.
    raise DamagedStepError(step_dir, f'{METRICS_FILE} cannot be read: '
                           f'{command_errors.one_line(e)}') from e
  if not isinstance(metrics, dict):
    raise DamagedStepError(step_dir, f'{METRICS_FILE} holds {type(metrics).__name__}, '
                           'expected a JSON object.')
  return metrics


def _split_checkpoint_path(path: str) -> Tuple[str, Optional[int]]:
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
      ranked.append((_best_value(read_step_metrics(_step_dir(workdir, step))), step))
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
  workdir, step = _split_checkpoint_path(path)
  if step is not None:
    return workdir, step
  steps, _ = candidate_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'{workdir}: the workdir holds no complete checkpoint.')
  return workdir, steps[0]


@dataclasses.dataclass(frozen=True)
class InferenceCheckpoint:
  """What `load_inference_checkpoint` loaded.

  Attributes:
    config: the run's config.
    params: the parameters to predict with (EMA parameters when the run kept
      an EMA), numpy arrays.
    workdir: the training workdir.
    step: the step loaded.
    skipped: one line per newer-ranked step that did not restore.
  """
  config: ml_collections.ConfigDict
  params: Any
  workdir: str
  step: int
  skipped: Tuple[str, ...] = ()

  @property
  def step_dir(self) -> str:
    return _step_dir(self.workdir, self.step)


def _restore_params(step_dir: str, key: str, abstract: Any) -> Any:
  check_saved_params_fit(step_dir, key, abstract[key])
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  try:
    restored = checkpointer.restore(
        epath.Path(step_dir) / STATE_ITEM, args=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True))
  finally:
    checkpointer.close()
  params = jax.device_get(restored[key])
  verify_checksums(step_dir, {key: params})
  return params


def load_inference_checkpoint(path: str) -> InferenceCheckpoint:
  """Loads the config and parameters of a trained model for prediction.

  Only the parameters are read (not the optimiser state), and verified
  against the step's checksums.
  Args:
    path: a training workdir (its best step by validation SROCC; a step that
      does not restore is logged in one line and the next one is tried) or a
      step directory `<workdir>/checkpoints/<step>` (that step or an error).
  Raises:
    FileNotFoundError: `path` is no workdir or step directory, or holds no
      config.json.
    ParamsMismatchError: the saved parameters do not fit the config's model.
    CheckpointError: no step restores (the message lists each step and why).
  """
  workdir, step = _split_checkpoint_path(path)
  config = load_config(workdir)
  key = 'ema_params' if config.optim.ema_decay else 'params'
  model = models.create_model(config)
  shapes = jax.eval_shape(
      functools.partial(train_step.init_params, model, image_size=config.data.image_size),
      jax.random.PRNGKey(0))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {key: jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)}
  if step is not None:
    step_dir = _step_dir(workdir, step)
    if not os.path.isdir(step_dir):
      raise FileNotFoundError(f'{step_dir}: no such checkpoint step.')
    try:
      return InferenceCheckpoint(config, _restore_params(step_dir, key, abstract), workdir,
                                 step)
    except ParamsMismatchError:
      raise
    except Exception as e:  # Orbax and TensorStore raise many types.
      raise DamagedStepError(step_dir, _failure_reason(step_dir, e)) from e
  steps, damaged = candidate_steps(workdir)
  skipped = [f'step {s}: {reason}' for s, reason in sorted(damaged.items(), reverse=True)]
  for candidate in steps:
    step_dir = _step_dir(workdir, candidate)
    try:
      params = _restore_params(step_dir, key, abstract)
    except ParamsMismatchError:
      raise
    except Exception as e:  # Orbax and TensorStore raise many types.
      skipped.append(f'step {candidate}: {_failure_reason(step_dir, e)}')
      continue
    for line in skipped:
      absl_logging.warning('%s: checkpoint %s; using step %d.', workdir, line, candidate)
    return InferenceCheckpoint(config, params, workdir, candidate, tuple(skipped))
  if not skipped:
    raise FileNotFoundError(f'{workdir}: the workdir holds no complete checkpoint.')
  raise CheckpointError(f'{workdir}: no checkpoint step restores: ' + '; '.join(skipped) + '.')


def load_for_inference(path: str) -> Tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of `load_inference_checkpoint(path)`."""
  loaded = load_inference_checkpoint(path)
  return loaded.config, loaded.params


def _shapes_by_name(tree: Any) -> Dict[str, Tuple[int, ...]]:
  return {name: tuple(leaf.shape)
          for name, leaf in traverse_util.flatten_dict(tree, sep='/').items()}


def _listing(names) -> str:
  names = sorted(names)
  shown = ', '.join(names[:_MAX_LISTED_NAMES])
  if len(names) > _MAX_LISTED_NAMES:
    shown += f', ... and {len(names) - _MAX_LISTED_NAMES} more'
  return shown


def check_saved_params_fit(step_dir: epath.PathLike, key: str, expected: Any) -> None:
  """Compares the arrays saved under state/<key> with the model's, before reading them.

  Args:
    step_dir: `<workdir>/checkpoints/<step>`.
    key: 'params' or 'ema_params'.
    expected: nested dict of arrays or jax.ShapeDtypeStruct (the model's).
  Raises:
    ParamsMismatchError (a ValueError) naming `step_dir` and listing the
    parameters missing from the checkpoint, those it has but the model lacks,
    and shape mismatches.
  """
  step_dir = epath.Path(step_dir)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(step_dir / STATE_ITEM).tree
  finally:
    handler.close()
  if not isinstance(saved.get(key), dict):
    raise ParamsMismatchError(f'{step_dir}: the saved state has no {key!r}.')
  saved_shapes, model_shapes = _shapes_by_name(saved[key]), _shapes_by_name(expected)
  problems = []
  missing = model_shapes.keys() - saved_shapes.keys()
  unexpected = saved_shapes.keys() - model_shapes.keys()
  mismatched = [f'{name}: checkpoint {saved_shapes[name]} vs model {shape}'
                for name, shape in model_shapes.items()
                if name in saved_shapes and saved_shapes[name] != shape]
  if missing:
    problems.append(f'missing from the checkpoint ({len(missing)}): {_listing(missing)}')
  if unexpected:
    problems.append(f'in the checkpoint but not in the model ({len(unexpected)}): '
                    f'{_listing(unexpected)}')
  if mismatched:
    problems.append(f'shape mismatches ({len(mismatched)}): {_listing(mismatched)}')
  if problems:
    raise ParamsMismatchError(f'{step_dir}: the saved {key} do not fit the model of the run config: '
                     + '; '.join(problems) + '. (Was config.model changed after training? '
                     'Then train into a new --workdir.)')


def _lock_path(workdir: str) -> str:
  # With several hosts each process locks its own file: process i of a second
  # run meets process i of the first.
  name = LOCK_FILE if jax.process_count() == 1 else f'{LOCK_FILE}.{jax.process_index()}'
  return os.path.join(absolute_path(workdir), name)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str]:
  """Holds the workdir's exclusive lock for the block (one training per workdir).

  Creates the workdir and <workdir>/train.lock, takes an `fcntl.flock` on it
  without waiting, and writes who holds it (pid, host, start time, command).
  The kernel drops the lock when the process ends, even by kill -9.
  Yields:
    The lock file's path.
  Raises:
    WorkdirLockedError: naming the lock file and the process that holds it.
  """
  path = _lock_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path, encoding='utf-8', errors='replace') as f:
        holder = ' '.join(f.read().split()) or 'a process that has not written its name yet'
      raise WorkdirLockedError(
          f'{os.path.dirname(path)}: another training is writing this workdir ({holder}; '
          f'lock {path}). Wait for it to end, stop it, or pass another --workdir.') from None
    holder = (f'pid {os.getpid()} on {socket.gethostname()}, started '
              f'{datetime.datetime.now().astimezone().isoformat(timespec="seconds")}: '
              f'{" ".join(sys.argv)}')
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, holder.encode('utf-8', errors='replace') + b'\n', 0)
    yield path
  finally:
    os.close(descriptor)  # Closing the last descriptor releases the flock.


class _OwnInfoOnly(logging.Filter):
  """Passes warnings and errors, and INFO records from mdiqa_jax only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def quiet_library_logging() -> None:
  """Keeps the command-line log readable: Orbax (and TFDS) log every file they
  touch at INFO; only this package's INFO lines and everyone's warnings pass."""
  absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())


class Preemption(BaseException):
  """SIGTERM arrived outside the train loop (a BaseException, like
  KeyboardInterrupt, so that no library's `except Exception` swallows it)."""


class PreemptionWatcher:
  """SIGTERM handling for a whole training job: every phase ends cleanly.

  Use as a context manager; the previous handler is restored on exit. Inside
  `polling()` (the train loop and its checkpoint writes) SIGTERM only sets a
  flag that the loop polls with `should_stop`, then saves and exits. Anywhere
  else (building the dataset, restoring, the final evaluation) SIGTERM raises
  `Preemption` at once; every file those phases write is written atomically,
  so nothing is left half-written. With several hosts, Orbax's preemption
  sync point (`reached_preemption`) makes every host stop at the same step;
  on one host the flag alone does.
  """

  def __init__(self):
    self._event = threading.Event()
    self._polling = 0
    self._previous: Optional[Callable] = None
    self._installed = False

  def __enter__(self) -> 'PreemptionWatcher':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)

  @contextlib.contextmanager
  def polling(self) -> Iterator['PreemptionWatcher']:
    """SIGTERM sets the flag instead of raising, for the block."""
    if self._event.is_set():
      raise Preemption()
    self._polling += 1
    try:
      yield self
    finally:
      self._polling -= 1

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._event.set()
    if not self._polling:
      raise Preemption()

  @property
  def received(self) -> bool:
    return self._event.is_set()

  def should_stop(self, step: int) -> bool:
    """True when this step is where training must save and exit."""
    if jax.process_count() > 1:
      return ocp.utils.reached_preemption(step)
    return self._event.is_set()
