r"""Exports a trained model as StableHLO (jax.export) with its preprocessing spec.

  mdiqa-export --checkpoint DIR --output DIR [--batch_size 0] \
      [--platforms cpu,cuda,tpu] [--overwrite]
  python -m mdiqa_jax.export ...          (the same)

The output folder (`load_exported` documents the layout) holds the serialized
function f(params, tiles) -> {score, uncertainty, scale_scores,
patch_scores, patch_weights[, patch_log_probs]} over native-resolution tiles,
its parameters, a JSON spec of the
preprocessing the model expects, and a copy of `load_exported.py`, which
reloads the model with jax and numpy only (no mdiqa_jax code). The batch
dimension is symbolic by default (any batch size); --batch_size=N fixes it.
The parameters are an argument of f rather than constants inside the
StableHLO, so a large model does not hit the 2 GB protobuf limit and the
weights stay inspectable. The folder is assembled in a temporary folder and
renamed into place, so a failed export leaves nothing half-written.
"""
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import load_exported as loader
from mdiqa_jax import models
from mdiqa_jax import predict

load_exported = loader.load_exported

_OUTPUT_DOCS = {
    'score': ('(B,)', 'expected score, 0 (bad) .. 4 (excellent)'),
    'uncertainty': ('(B,)', 'standard deviation of the predicted score distribution, '
                    'score units'),
    'scale_scores': ('(B, K)', 'expected score of each of the K distribution heads'),
    'patch_scores': ('(B, h, w)', 'expected score of each patch of the grid'),
    'patch_weights': ('(B, h, w)', 'positive weight of each patch; score = '
                      'sum(w * s) / sum(w) over the patches'),
    'patch_log_probs': ('(B, h, w, K, bins)', 'log-probabilities of the score bins per '
                        'patch and head (distribution heads): pool these over the tiles '
                        'of a slice (preprocessing steps)'),
}
# Outputs of the exported function (patch_log_probs: distribution heads only).
OUTPUT_KEYS = tuple(_OUTPUT_DOCS)


def export_model(config: ml_collections.ConfigDict, params: Any, *,
                 batch_size: Optional[int] = None,
                 platforms: Sequence[str] = ('cpu',)) -> jax.export.Exported:
  """Exports f(params, tiles) -> OUTPUT_KEYS for the model of `config`.

  Args:
    config: the run config (model, loss.sigmas, data.image_size).
    params: parameters whose shapes and dtypes the export is specialised to.
    batch_size: fixed batch, or None for a symbolic batch dimension.
    platforms: jax platform names to lower for ('cpu', 'cuda', 'rocm', 'tpu').
  """
  model = models.create_model(config)

  def apply(params, images):
    outputs = model.apply({'params': params}, images, train=False)
    return {key: outputs[key] for key in OUTPUT_KEYS if key in outputs}

  size = int(config.data.image_size)
  batch = jax.export.symbolic_shape('batch')[0] if batch_size is None else int(batch_size)
  images = jax.ShapeDtypeStruct((batch, size, size, 1), np.float32)
  param_specs = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), params)
  return jax.export.export(jax.jit(apply), platforms=tuple(platforms))(param_specs, images)


def preprocessing_spec(preprocessing: predict.Preprocessing, *, batch_size: Optional[int],
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
          steps=[
              'HU -> [0, 1]: clip((HU - (window_level - window_width / 2)) / window_width, '
              '0, 1) (float slices already in [0, 1] are used as they are)',
              'pixel spacing: the file\'s (DICOM PixelSpacing), else assumed_pixel_mm; a '
              'slice whose spacing lies outside pixel_mm_range is resampled (band-'
              'limited: DCT-II spectrum cut or zero-padded, preprocess.resample_band_limited) to the nearest end of the range; '
              'otherwise pixels are used as they are (never resized)',
              'body mask: 7 x 7 mean of the [0, 1] slice > 0.007; tiles of tile_size x '
              'tile_size native pixels on a grid of ceil(H / tile_size) x ceil(W / '
              'tile_size) origins spread evenly from 0 to H - tile_size (W likewise); '
              'tiles whose body fraction is below min_body_fraction are skipped',
              'slice score: every patch i of every tile weighted by patch_weights_i x its '
              'body fraction; p_k = sum_i w_i exp(patch_log_probs_ik) / sum_i w_i per head '
              'k; score = expectation of mean_k p_k, uncertainty = its standard deviation '
              '(point heads: score = sum_i w_i patch_scores_i / sum_i w_i)',
          ]),
      'outputs': {key: {'shape': shape, 'meaning': meaning}
                  for key, (shape, meaning) in _OUTPUT_DOCS.items()},
      'num_scales': len(config.loss.sigmas),
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
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(output_dir)}.')
  try:
    with open(os.path.join(staging, loader.MODEL_FILE), 'wb') as f:
      f.write(exported.serialize())
    leaves = jax.tree_util.tree_leaves(params)
    np.savez(os.path.join(staging, loader.PARAMS_FILE),
             **{loader.leaf_name(i): np.asarray(leaf) for i, leaf in enumerate(leaves)})
    with open(os.path.join(staging, loader.SPEC_FILE), 'w', encoding='utf-8') as f:
      json.dump(spec, f, indent=2)
      f.write('\n')
    shutil.copyfile(loader.__file__, os.path.join(staging, 'load_exported.py'))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; an export is meant to be shared.
    if os.path.exists(output_dir):
      shutil.rmtree(output_dir)
    os.rename(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def export_checkpoint(checkpoint: str, output_dir: str, *, batch_size: Optional[int] = None,
                      platforms: Sequence[str] = ('cpu',), overwrite: bool = False) -> None:
  """Loads a checkpoint (predict.load_checkpoint) and writes its export folder."""
  check_output_dir(output_dir, overwrite)
  config, params = predict.load_checkpoint(checkpoint)
  preprocessing = predict.Preprocessing.from_config(config)
  exported = export_model(config, params, batch_size=batch_size, platforms=platforms)
  spec = preprocessing_spec(preprocessing, batch_size=batch_size, config=config,
                            exported=exported, checkpoint=os.path.abspath(checkpoint))
  write_export(output_dir, exported, params, spec, overwrite=overwrite)


def _define_flags() -> Dict[str, Any]:
  """Defines the flags when run as a command (importing export defines none)."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'Training workdir (its best checkpoint) or a step directory.'),
      'output': flags.DEFINE_string('output', None, 'Export folder to write.'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', 0, 'Fixed batch size; 0 = symbolic (any batch size).'),
      'platforms': flags.DEFINE_list(
          'platforms', ['cpu'], 'Platforms to lower for: cpu, cuda, rocm, tpu.'),
      'overwrite': flags.DEFINE_bool('overwrite', False, 'Replace a previous export folder.'),
  }


def run():
  """Console entry point `mdiqa-export`."""
  holders = _define_flags()

  def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    checkpoint, output = holders['checkpoint'].value, holders['output'].value
    batch_size = holders['batch_size'].value
    if not checkpoint or not output:
      raise app.UsageError('--checkpoint and --output are required.')
    if batch_size < 0:
      raise app.UsageError(f'--batch_size must be >= 0, got {batch_size}.')
    checkpointing.quiet_library_logging()
    try:
      export_checkpoint(checkpoint, output, batch_size=batch_size or None,
                        platforms=holders['platforms'].value,
                        overwrite=holders['overwrite'].value)
    except (predict.CheckpointError, FileExistsError) as e:
      print(f'mdiqa-export: error: {command_errors.one_line(e)}', file=sys.stderr)
      return predict.EXIT_FATAL
    print(f'mdiqa-export: wrote {os.path.abspath(output)}', file=sys.stderr)
    return 0

  command_errors.run(main, 'mdiqa-export')


if __name__ == '__main__':
  run()
