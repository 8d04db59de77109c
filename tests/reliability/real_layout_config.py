"""The training tests' tiny model on a fake copy of the LDCTIQAC2023 release.

The reliability tests train, kill, damage and resume real runs. They use the
`ldctiqac2023` builder on files they write themselves (`write_release`), so
they depend on nothing but that builder's documented on-disk layout.

`--config=tests/reliability/real_layout_config.py:DATA_DIR` reads the dataset
that `build(DATA_DIR, MANUAL_DIR)` prepared there.
"""
import json
import os

import numpy as np
import tensorflow_datasets as tfds
import tifffile

import tiny_train_config

NUM_TRAIN, NUM_TEST = 24, 4
SIDE = 512  # The release's slice side (the builder checks it).


def _slice(rng: np.random.Generator, noise: float) -> np.ndarray:
  """A body (ellipse of soft tissue) in air, windowed to [0, 1], with white noise."""
  rows, cols = np.mgrid[:SIDE, :SIDE]
  body = ((rows - 256) / 200.0) ** 2 + ((cols - 256) / 230.0) ** 2 < 1
  image = np.where(body, 0.5, 0.0) + noise * rng.standard_normal((SIDE, SIDE))
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def write_release(manual_dir: str, seed: int = 0) -> None:
  """LDCTIQAG2023_train/{train.json,image/NNNN.tif} and LDCTIQAC_test/{test.json,images/}.

  Scores fall with the noise level, so that a model can learn something.
  """
  rng = np.random.default_rng(seed)
  for folder, label_file, image_folder, extension, count in (
      ('LDCTIQAG2023_train', 'train.json', 'image', '.tif', NUM_TRAIN),
      ('LDCTIQAC_test', 'test.json', 'images', '.tiff', NUM_TEST)):
    os.makedirs(os.path.join(manual_dir, folder, image_folder))
    labels = {}
    for i in range(count):
      score = round(float(rng.integers(0, 21)) * 0.2, 1)
      name = f'{i:04d}{extension}'
      tifffile.imwrite(os.path.join(manual_dir, folder, image_folder, name),
                       _slice(rng, noise=0.02 + 0.05 * (4.0 - score)))
      labels[name] = score
    with open(os.path.join(manual_dir, folder, label_file), 'w', encoding='utf-8') as f:
      json.dump(labels, f)


def build(data_dir: str, manual_dir: str) -> None:
  """Writes the fake release into manual_dir and prepares the TFDS dataset in data_dir."""
  from mdiqa_jax.data import ldctiqac2023  # pylint: disable=g-import-not-at-top
  write_release(manual_dir)
  ldctiqac2023.Ldctiqac2023(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


# A short run saving steps 2, 4 and 6 (all kept), without evaluations: the
# checkpoint damage tests damage its step 6 and resume.
SHORT_RUN = {'num_train_steps': 6, 'checkpoint_every_steps': 2, 'keep_checkpoints': 3,
             'keep_best': 0, 'eval_every_steps': 0, 'data.test_split': ''}


def flags(overrides: dict) -> list:
  """--config.<field>=<value> flags for `overrides` ({dotted field: value})."""
  return [f'--config.{field}={value}' for field, value in overrides.items()]


def apply(config, overrides: dict):
  """Sets `overrides` ({dotted field: value}) on config, as the flags would."""
  for field, value in overrides.items():
    *parents, name = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def get_config(data_dir=None):
  config = tiny_train_config.get_config(data_dir)
  config.data.name = 'ldctiqac2023'
  config.data.train_split = f'train[:{NUM_TRAIN - 8}]'
  config.data.eval_split = f'train[{NUM_TRAIN - 8}:]'
  config.data.test_split = 'test'
  return config
