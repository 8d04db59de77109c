"""Loads a model written by `mdiqa-export`, with jax and numpy only.

This file depends on nothing of mdiqa_jax; `mdiqa-export` copies it into
every export folder, so that a user without this package can run:

  from load_exported import load_exported
  model = load_exported('exported/')
  outputs = model(images)   # images (B, S, S, 1) float32 in [0, 1]
  outputs['score']          # (B,) numpy, 0 (bad) .. 4 (excellent)

model.spec holds preprocessing.json: how to turn a CT slice into `images`
(window, pixel spacing, native tiles, and how to pool the tiles of a slice)
and what each output means.

Folder layout:
  model.jaxexport      jax.export serialization (StableHLO) of
                       f(params, images) -> {output name: array}
  params.npz           parameter leaves in the flattening order of f's first
                       argument, named leaf_00000, leaf_00001, ...
  preprocessing.json   the spec
"""
import json
import os
from typing import Any, Dict

import jax
import numpy as np

MODEL_FILE = 'model.jaxexport'
PARAMS_FILE = 'params.npz'
SPEC_FILE = 'preprocessing.json'


def leaf_name(index: int) -> str:
  return f'leaf_{index:05d}'


class ExportedModel:
  """A deserialized model: call it on (B, S, S, 1) float32 images in [0, 1]."""

  def __init__(self, exported: Any, params: Any, spec: Dict[str, Any]):
    self._exported = exported
    self._params = params
    self.spec = spec

  def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Returns {output name: numpy array} (names and shapes in spec['outputs'])."""
    images = np.asarray(images, np.float32)
    size = self.spec['input']['image_size']
    if images.ndim != 4 or images.shape[1:] != (size, size, 1):
      raise ValueError(f'Expected images of shape (B, {size}, {size}, 1), got {images.shape}.')
    batch = self.spec['input']['batch_size']
    if batch is not None and images.shape[0] != batch:
      raise ValueError(f'This export has a fixed batch of {batch} images, got '
                       f'{images.shape[0]}.')
    return jax.tree_util.tree_map(np.asarray, self._exported.call(self._params, images))


def load_exported(directory: str) -> ExportedModel:
  """Reads an export folder (module docstring) into a callable model.

  Raises:
    FileNotFoundError: naming the folder when one of its files is missing.
  """
  paths = {name: os.path.join(directory, name) for name in (MODEL_FILE, PARAMS_FILE, SPEC_FILE)}
  missing = [name for name, path in paths.items() if not os.path.isfile(path)]
  if missing:
    raise FileNotFoundError(f'{directory}: not an mdiqa-export folder (missing {missing}).')
  with open(paths[MODEL_FILE], 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with open(paths[SPEC_FILE], encoding='utf-8') as f:
    spec = json.load(f)
  with np.load(paths[PARAMS_FILE], allow_pickle=False) as archive:
    leaves = [archive[leaf_name(i)] for i in range(len(archive.files))]
  # in_tree describes ((params, images), {}); the images leaf comes last.
  (params, _), _ = jax.tree_util.tree_unflatten(exported.in_tree, leaves + [None])
  return ExportedModel(exported, params, spec)
