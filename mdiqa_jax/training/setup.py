"""What a run needs before its first step: step count, pretrained weights, the data."""
import functools
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import tensorflow_datasets as tfds

from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import convert
from mdiqa_jax.data import pipeline



def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """config.num_train_steps when > 0, else num_epochs full passes (rounded)."""
  num_train_steps = int(config.num_train_steps)
  if num_train_steps > 0:
    return num_train_steps
  process_count = jax.process_count()
  # The input pipeline drops the remainder of each host's shard every epoch.
  steps_per_epoch = (num_train_examples // process_count) // (config.batch_size //
                                                              process_count)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def load_pretrained_backbones(config: ml_collections.ConfigDict, params: Any) -> Any:
  """Replaces the ViT / ConvNeXt params by config.model.<family>.init_from files."""
  params = dict(params)
  for family in convert.FAMILIES:
    path = config.model[family].init_from
    if not path:
      continue
    if family not in params:
      raise ValueError(f'config.model.{family}.init_from={path!r} but the model has no '
                       f'{family} branch (config.model.use_vit / use_cnn).')
    params[family], report = convert.load_pretrained(params[family], path, family,
                                                     image_size=config.data.image_size)
    logging.info('Pretrained %s from %s:\n%s', family, path, report.summary())
  return params


def prepare_and_validate_data(config: ml_collections.ConfigDict) -> None:
  """Builds the dataset if absent (process 0) and checks the splits the run names.

  Raises:
    config_validation.ConfigError: for an unknown dataset or split, or a
      training split smaller than one batch.
  """
  if jax.process_index() == 0:
    try:
      pipeline.prepare_dataset(config.data)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise config_validation.ConfigError(
          f'config.data.name={config.data.name!r}: '
          f'{command_errors.one_line(e).split(" Available")[0]}') from e
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mdiqa_jax: dataset prepared')
  config_validation.validate_splits(
      config, functools.partial(pipeline.num_examples, config.data))


def split_exists(data_config: ml_collections.ConfigDict, split: str) -> bool:
  try:
    return pipeline.num_examples(data_config, split) > 0
  except (KeyError, ValueError):
    return False
