"""Checkpoints: Orbax CheckpointManager, preemption, and loading for inference.

Workdir layout:
  <workdir>/config.json              the run's full config (JSON)
  <workdir>/checkpoints/<step>/      one Orbax checkpoint per saved step:
      state/    TrainState (params, opt_state, ema_params, step, rng)
      data/     the training iterator position, one JSON per host
      metrics/  validation metrics of that step, when it was evaluated

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save (SIGKILL, power loss) leaves no partial
step: the next run ignores and deletes the temporary directory and resumes
from the last complete step. Kept: the `keep_last` most recent steps plus the
`keep_best` steps of highest validation SROCC.
"""
import functools
import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging as absl_logging
from etils import epath
from flax import traverse_util
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mdiqa_jax import files
from mdiqa_jax import models
from mdiqa_jax import train_step

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
BEST_METRIC = 'srocc'
STATE_ITEM = 'state'
# Error messages list at most this many parameter names, then a count of the rest.
_MAX_LISTED_NAMES = 20


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
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep_last),
      checkpoint_managers.BestN(get_metric_fn=_best_value, n=keep_best,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=_best_value, best_mode='max',
      cleanup_tmp_directories=True, enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(
      os.path.join(absolute_path(workdir), CHECKPOINT_DIR), options=options,
      item_names=(STATE_ITEM, 'data'))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Optional[grain.DatasetIterator] = None,
         metrics: Optional[Dict[str, float]] = None) -> bool:
  """Saves `state` (global replicated arrays) and the iterator position at `step`.

  Returns False (and writes nothing) when `step` is already saved.
  """
  if step in manager.all_steps():
    return False
  items = {STATE_ITEM: ocp.args.PyTreeSave(state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  # Steps without validation get empty metrics: they rank last among the best
  # (ties go to the latest step) and Orbax does not warn about missing metrics.
  metrics = {k: float(v) for k, v in (metrics or {}).items()}
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Optional[grain.DatasetIterator] = None) -> Any:
  """Restores the state of `step` into the layout of `abstract_state`.

  With `data_iterator`, also moves it to the saved position (in place).
  Raises ValueError, naming the step directory, when the saved parameters do
  not fit `abstract_state.params` (the run's model config was changed).
  """
  check_saved_params_fit(os.path.join(manager.directory, str(step)), 'params',
                         abstract_state.params)
  items = {STATE_ITEM: ocp.args.PyTreeRestore(
      abstract_state,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]


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


def _open_for_reading(workdir: str) -> ocp.CheckpointManager:
  # Not read_only=True: that mode logs a warning per option it overrides.
  return ocp.CheckpointManager(
      os.path.join(absolute_path(workdir), CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(best_fn=_best_value, best_mode='max',
                                           create=False, save_root_metadata=False),
      item_names=(STATE_ITEM, 'data'))


def resolve_checkpoint(path: str) -> Tuple[str, int]:
  """Workdir or step directory -> (workdir, step).

  A workdir gives its best step by validation SROCC (the latest when no step
  has validation metrics); `<workdir>/checkpoints/<step>` gives that step.
  """
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit():
    return os.path.dirname(parent), int(os.path.basename(path))
  if not os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    raise FileNotFoundError(
        f'{path}: neither a training workdir (no {CHECKPOINT_DIR}/ inside) nor a step '
        f'directory <workdir>/{CHECKPOINT_DIR}/<step>.')
  manager = _open_for_reading(path)
  step = manager.best_step()
  if step is None:
    step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f'{path}: the workdir holds no complete checkpoint.')
  return path, step


def load_for_inference(path: str) -> Tuple[ml_collections.ConfigDict, Any]:
  """Loads (config, params) of a trained model for prediction.

  Only the parameters are read (not the optimiser state).
  Args:
    path: a training workdir (its best checkpoint by validation SROCC) or a
      step directory `<workdir>/checkpoints/<step>`.
  Returns:
    (config, params): the run's config and the parameters to predict with
    (the EMA parameters when the run kept an EMA), as numpy arrays.
  """
  workdir, step = resolve_checkpoint(path)
  config = load_config(workdir)
  key = 'ema_params' if config.optim.ema_decay else 'params'
  model = models.create_model(config)
  shapes = jax.eval_shape(
      functools.partial(train_step.init_params, model, image_size=config.data.image_size),
      jax.random.PRNGKey(0))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {key: jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)}
  check_saved_params_fit(os.path.join(absolute_path(workdir), CHECKPOINT_DIR, str(step)),
                         key, abstract[key])
  manager = _open_for_reading(workdir)
  restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeRestore(
      abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True)}))[STATE_ITEM]
  manager.close()
  return config, jax.device_get(restored[key])


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
    ValueError naming `step_dir` and listing the parameters missing from the
    checkpoint, those it has but the model lacks, and shape mismatches.
  """
  step_dir = epath.Path(step_dir)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(step_dir / STATE_ITEM).tree
  finally:
    handler.close()
  if not isinstance(saved.get(key), dict):
    raise ValueError(f'{step_dir}: the saved state has no {key!r}.')
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
    raise ValueError(f'{step_dir}: the saved {key} do not fit the model of the run config: '
                     + '; '.join(problems) + '. (Was config.model changed after training? '
                     'Then train into a new --workdir.)')


class _OwnInfoOnly(logging.Filter):
  """Passes warnings and errors, and INFO records from mdiqa_jax only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def quiet_library_logging() -> None:
  """Keeps the command-line log readable: Orbax (and TFDS) log every file they
  touch at INFO; only this package's INFO lines and everyone's warnings pass."""
  absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())


class PreemptionWatcher:
  """Turns SIGTERM into a flag the train loop polls (then saves and exits).

  Use as a context manager; the previous handler is restored on exit. With
  several hosts, Orbax's preemption sync point (`reached_preemption`) makes
  every host stop at the same step; on one host the flag alone does.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._event = threading.Event()
    self._previous: Optional[Callable] = None

  def __enter__(self) -> 'PreemptionWatcher':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._event.set()

  def should_stop(self, step: int) -> bool:
    """True when this step is where training must save and exit."""
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._event.is_set()
