"""A trained model for prediction: the run config and the parameters of one step.

  load_inference_checkpoint(path) -> InferenceCheckpoint(config, params, ...)
  load_checkpoint(path) -> (config, params), every failure a CheckpointError

`path` is a training workdir (its best step by validation SROCC; a step that
does not restore is logged in one line and the next one is tried) or a step
directory <workdir>/checkpoints/<step> (that step or an error). Only the
parameters are read (EMA parameters when the run kept an EMA), verified against
the step's checksums (`training.checkpoints`).
"""
import dataclasses
import os
from typing import Any, Tuple

from absl import logging as absl_logging
import jax
import ml_collections

from mdiqa_jax import checkpointing
from mdiqa_jax import models
from mdiqa_jax import train_step

CheckpointError = checkpointing.CheckpointError


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
    return checkpointing.step_dir(self.workdir, self.step)


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
    checkpointing.ParamsMismatchError: the saved parameters do not fit the config's model.
    CheckpointError: no step restores (the message lists each step and why).
  """
  workdir, step = checkpointing.split_checkpoint_path(path)
  config = checkpointing.load_config(workdir)
  key = 'ema_params' if config.optim.ema_decay else 'params'
  model = models.create_model(config)
  shapes = train_step.param_shapes(model, config.data.image_size)
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {key: jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)}
  if step is not None:
    step_dir = checkpointing.step_dir(workdir, step)
    if not os.path.isdir(step_dir):
      raise FileNotFoundError(f'{step_dir}: no such checkpoint step.')
    try:
      params = checkpointing.restore_params(step_dir, key, abstract)
      return InferenceCheckpoint(config, params, workdir, step)
    except checkpointing.ParamsMismatchError:
      raise
    except Exception as e:  # Orbax and TensorStore raise many types.
      raise checkpointing.DamagedStepError(
          step_dir, checkpointing.failure_reason(step_dir, e)) from e
  steps, damaged = checkpointing.candidate_steps(workdir)
  skipped = [f'step {s}: {reason}' for s, reason in sorted(damaged.items(), reverse=True)]
  for candidate in steps:
    step_dir = checkpointing.step_dir(workdir, candidate)
    try:
      params = checkpointing.restore_params(step_dir, key, abstract)
    except checkpointing.ParamsMismatchError:
      raise
    except Exception as e:  # Orbax and TensorStore raise many types.
      skipped.append(f'step {candidate}: {checkpointing.failure_reason(step_dir, e)}')
      continue
    for line in skipped:
      absl_logging.warning('%s: checkpoint %s; using step %d.', workdir, line, candidate)
    return InferenceCheckpoint(config, params, workdir, candidate, tuple(skipped))
  if not skipped:
    raise FileNotFoundError(f'{workdir}: the workdir holds no complete checkpoint.')
  raise checkpointing.CheckpointError(
      f'{workdir}: no checkpoint step restores: ' + '; '.join(skipped) + '.')


def load_checkpoint(path: str) -> Tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of a workdir's best checkpoint or of a step directory.

  Raises:
    CheckpointError: naming `path` when it is missing, holds no checkpoint,
      or holds parameters that do not fit the model its config describes.
  """
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such checkpoint directory.')
  try:
    loaded = load_inference_checkpoint(path)
  except Exception as e:  # Orbax and the config reader raise many types.
    raise CheckpointError(f'{path}: cannot load a model checkpoint: {e}') from e
  return loaded.config, loaded.params
