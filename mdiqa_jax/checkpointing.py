"""Checkpoints: the Orbax CheckpointManager, the workdir layout, damage.

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
<workdir>/train.lock while it runs (`workdir_lock.py`); SIGTERM is handled by
`preemption.py`. Both are importable from here as before.
"""
import dataclasses
import hashlib
import os
import re
from typing import Any, Dict, Optional, Tuple

from absl import logging as absl_logging
from etils import epath
from flax import traverse_util
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mdiqa_jax import command_errors
from mdiqa_jax.cli import quiet_library_logging
from mdiqa_jax.preemption import Preemption, PreemptionWatcher
from mdiqa_jax.workdir import (BEST_METRIC, CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE,
                               CheckpointError, DamagedStepError, absolute_path, best_value,
                               config_from_values,
                               candidate_steps, check_resumable, list_steps, lists_to_tuples,
                               load_config, read_step_metrics, read_step_record, resolve_checkpoint,
                               save_config,
                               split_checkpoint_path, step_dir)
from mdiqa_jax.workdir_lock import LOCK_FILE, WorkdirLockedError, workdir_lock

# The workdir layout, the lock and the preemption watcher live in their own
# modules; their names stay importable from here.
__all__ = [
    'BEST_METRIC', 'CHECKPOINT_DIR', 'CHECKSUM_ITEM', 'CONFIG_FILE', 'DAMAGED_DIR', 'DATA_ITEM',
    'LOCK_FILE', 'METRICS_FILE', 'STATE_ITEM', 'CheckpointError', 'DamagedStepError',
    'ParamsMismatchError', 'Preemption', 'PreemptionWatcher', 'WorkdirLockedError',
    'absolute_path', 'candidate_steps', 'check_resumable', 'check_saved_params_fit',
    'config_from_values',
    'create_manager', 'failure_reason', 'list_steps', 'lists_to_tuples', 'load_config',
    'load_inference_checkpoint', 'quiet_library_logging', 'read_step_metrics',
    'resolve_checkpoint', 'restore', 'restore_newest_intact', 'restore_params', 'save',
    'save_config', 'set_aside', 'split_checkpoint_path', 'state_checksums', 'step_dir',
    'tree_checksum', 'verify_checksums', 'workdir_lock',
]

DAMAGED_DIR = 'damaged_checkpoints'
STATE_ITEM = 'state'
DATA_ITEM = 'data'
CHECKSUM_ITEM = 'checksums'
_ITEM_NAMES = (STATE_ITEM, DATA_ITEM, CHECKSUM_ITEM)
# Error messages list at most this many parameter names, then a count of the rest.
_MAX_LISTED_NAMES = 20


def load_inference_checkpoint(path: str) -> Any:
  """`inference.checkpoint.load_inference_checkpoint(path)`: this name is kept for
  callers; it imports the models only when called, so that checkpointing does
  not depend on them."""
  from mdiqa_jax.inference import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.load_inference_checkpoint(path)


class ParamsMismatchError(command_errors.UserError, ValueError):
  """The saved parameters do not fit the model of the run config (not damage)."""


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
      read_step_metrics(step_dir(workdir, step))
    except DamagedStepError as error:
      set_aside(workdir, step, error.reason)
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep_last),
      checkpoint_managers.BestN(get_metric_fn=best_value, n=keep_best,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=best_value, best_mode='max',
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


def _saved_checksums(step_dir: str) -> Optional[Dict[str, str]]:
  """The checksums saved with a step; None for steps saved before they existed."""
  path = epath.Path(step_dir) / CHECKSUM_ITEM
  if not path.exists():
    return None
  return read_step_record(step_dir, f'{CHECKSUM_ITEM}/',
                          lambda: ocp.JsonCheckpointHandler().restore(path))


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


def failure_reason(step_dir: str, error: BaseException) -> str:
  """One line saying why a step did not restore (the file or array named)."""
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
    raise DamagedStepError(step_dir, failure_reason(step_dir, e)) from e
  return state


def set_aside(workdir: str, step: int, reason: str) -> str:
  """Moves a damaged step to <workdir>/damaged_checkpoints/ (process 0); returns where."""
  source = step_dir(workdir, step)
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


def restore_params(step_dir: str, key: str, abstract: Any) -> Any:
  """Only state/<key> of a step (abstract: {key: ShapeDtypeStructs}), fitted and
  checksum-verified (`check_saved_params_fit`, `verify_checksums`), as numpy."""
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


def _shapes_by_name(tree: Any) -> Dict[str, Tuple[int, ...]]:
  return {name: tuple(leaf.shape)
          for name, leaf in traverse_util.flatten_dict(tree, sep='/').items()}


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
    problems.append(f'missing from the checkpoint ({len(missing)}): '
                    f'{command_errors.listing(sorted(missing), _MAX_LISTED_NAMES)}')
  if unexpected:
    problems.append(f'in the checkpoint but not in the model ({len(unexpected)}): '
                    f'{command_errors.listing(sorted(unexpected), _MAX_LISTED_NAMES)}')
  if mismatched:
    problems.append(f'shape mismatches ({len(mismatched)}): '
                    f'{command_errors.listing(sorted(mismatched), _MAX_LISTED_NAMES)}')
  if problems:
    raise ParamsMismatchError(f'{step_dir}: the saved {key} do not fit the model of the run config: '
                     + '; '.join(problems) + '. (Was config.model changed after training? '
                     'Then train into a new --workdir.)')
