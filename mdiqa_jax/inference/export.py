"""Exporting a trained model as StableHLO (jax.export) with its preprocessing spec.

The export folder (`load_exported` documents the layout) holds the serialized
function f(params, tiles) -> {score, uncertainty, scale_scores, patch_scores,
patch_weights[, patch_log_probs]} over native-resolution tiles (the same
`make_predict_fn` every scoring path runs), its parameters, a JSON spec of the
preprocessing the model expects (`preprocessing.STEPS`), and a copy of
`load_exported.py`, which reloads the model with jax and numpy only. The
parameters are an argument of f rather than constants inside the StableHLO, so
a large model does not hit the 2 GB protobuf limit and the weights stay
inspectable. The folder is assembled in a temporary folder and renamed into
place (`files.staged_directory`), so a failed export leaves nothing half-written.
"""
import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

from mdiqa_jax import files
from mdiqa_jax import models
from mdiqa_jax.inference import load_exported as loader
from mdiqa_jax.inference.checkpoint import load_checkpoint
from mdiqa_jax.inference.predict_fn import make_predict_fn
from mdiqa_jax.inference.preprocessing import STEPS, Preprocessing
from mdiqa_jax.models.head import OUTPUTS

load_exported = loader.load_exported
# Outputs of the exported function (patch_log_probs: distribution heads only).
OUTPUT_KEYS = ('score', 'uncertainty', 'scale_scores', 'patch_scores', 'patch_weights',
               'patch_log_probs')


def _num_scales(exported: jax.export.Exported) -> int:
  """K, read from the exported function's 'scale_scores' output (B, K)."""
  outputs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  return int(outputs['scale_scores'].shape[-1])


def export_model(config: ml_collections.ConfigDict, params: Any, *,
                 batch_size: Optional[int] = None,
                 platforms: Sequence[str] = ('cpu',)) -> jax.export.Exported:
  """Exports f(params, tiles) -> OUTPUT_KEYS for the model of `config`.

  Args:
    config: the run config (model, data.image_size).
    params: parameters whose shapes and dtypes the export is specialised to.
    batch_size: fixed batch, or None for a symbolic batch dimension.
    platforms: jax platform names to lower for ('cpu', 'cuda', 'rocm', 'tpu').
  """
  predict = make_predict_fn(models.create_model(config), OUTPUT_KEYS)
  size = int(config.data.image_size)
  batch = jax.export.symbolic_shape('batch')[0] if batch_size is None else int(batch_size)
  images = jax.ShapeDtypeStruct((batch, size, size, 1), np.float32)
  param_specs = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), params)
  return jax.export.export(predict, platforms=tuple(platforms))(param_specs, images)


def preprocessing_spec(preprocessing: Preprocessing, *, batch_size: Optional[int],
                       config: ml_collections.ConfigDict, exported: jax.export.Exported,
                       checkpoint: str) -> Dict[str, Any]:
  """The JSON spec written beside the exported model."""
  return {
      'format': 'mdiqa_jax jax.export model',
      'input': {
          'name': 'images',
          'shape': ['B' if batch_size is None else batch_size, preprocessing.tile_size,
                    preprocessing.tile_size, 1],
          'image_size': preprocessing.tile_size,
          'batch_size': batch_size,
          'dtype': 'float32',
          'range': [0.0, 1.0],
      },
      'preprocessing': dict(
          dataclasses.asdict(preprocessing),
          steps=list(STEPS)),
      'outputs': {key: {'shape': shape, 'meaning': meaning}
                  for key, (shape, meaning) in OUTPUTS.items() if key in OUTPUT_KEYS},
      'num_scales': _num_scales(exported),
      'score_range': [float(config.model.head.score_min), float(config.model.head.score_max)],
      'platforms': list(exported.platforms),
      'calling_convention_version': exported.calling_convention_version,
      'jax_version': jax.__version__,
      'checkpoint': checkpoint,
      'config': json.loads(config.to_json_best_effort()),
  }


def check_output_dir(output_dir: str, overwrite: bool) -> None:
  """Raises FileExistsError (naming it) unless `output_dir` may be written.

  It may be when it is absent or empty, or, with `overwrite`, when it holds a
  previous export (never another folder, which --overwrite would delete).
  """
  if not os.path.exists(output_dir) or (os.path.isdir(output_dir) and
                                        not os.listdir(output_dir)):
    return
  if not overwrite:
    raise FileExistsError(f'{output_dir}: already exists and is not empty; pass '
                          '--overwrite to replace it.')
  if not os.path.isfile(os.path.join(output_dir, loader.SPEC_FILE)):
    raise FileExistsError(f'{output_dir}: exists and is not an mdiqa-export folder (no '
                          f'{loader.SPEC_FILE}); refusing to replace it.')


def write_export(output_dir: str, exported: jax.export.Exported, params: Any,
                 spec: Dict[str, Any], *, overwrite: bool = False) -> None:
  """Writes the export folder atomically (temporary folder, then rename).

  Raises:
    FileExistsError: from `check_output_dir`.
  """
  output_dir = os.path.abspath(output_dir)
  check_output_dir(output_dir, overwrite)
  with files.staged_directory(output_dir, replace=True) as staging:
    with open(os.path.join(staging, loader.MODEL_FILE), 'wb') as f:
      f.write(exported.serialize())
    leaves = jax.tree_util.tree_leaves(params)
    np.savez(os.path.join(staging, loader.PARAMS_FILE),
             **{loader.leaf_name(i): np.asarray(leaf) for i, leaf in enumerate(leaves)})
    with open(os.path.join(staging, loader.SPEC_FILE), 'w', encoding='utf-8') as f:
      json.dump(spec, f, indent=2)
      f.write('\n')
    shutil.copyfile(loader.__file__, os.path.join(staging, 'load_exported.py'))


def export_checkpoint(checkpoint: str, output_dir: str, *, batch_size: Optional[int] = None,
                      platforms: Sequence[str] = ('cpu',), overwrite: bool = False) -> None:
  """Loads a checkpoint (`checkpoint.load_checkpoint`) and writes its export folder."""
  check_output_dir(output_dir, overwrite)
  config, params = load_checkpoint(checkpoint)
  preprocessing = Preprocessing.from_config(config)
  exported = export_model(config, params, batch_size=batch_size, platforms=platforms)
  spec = preprocessing_spec(preprocessing, batch_size=batch_size, config=config,
                            exported=exported, checkpoint=os.path.abspath(checkpoint))
  write_export(output_dir, exported, params, spec, overwrite=overwrite)
