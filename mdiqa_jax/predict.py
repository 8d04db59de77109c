r"""Scoring CT scans: a quality score and its uncertainty for every slice.

  mdiqa-predict --checkpoint DIR INPUT... [--output FILE.csv|FILE.json]
      [--heatmap DIR] [--overwrite] [--batch_size N] [--crops 1|5]
      [--intensity auto|hu|unit] [--window_width 350 --window_level 40]
  python -m mdiqa_jax.predict ...        (the same)

INPUTs are files or folders of DICOM, TIFF, PNG or .npy files (`mdiqa_jax.io`:
how each is read as HU or as windowed intensities, how folders and DICOM
series are ordered). --checkpoint is a training workdir (its best checkpoint)
or a step directory <workdir>/checkpoints/<step>.

Each slice goes the way evaluation slices go: HU are windowed to [0, 1] with
`intensity.window_to_unit` (soft-tissue window, width 350 / level 40 HU
unless overridden), then `preprocess.eval_crops` cuts the centre square window
of side crop_fraction x min(H, W) (or four corners + centre with --crops=5)
and resizes it to the model's image_size with the training resampling filter;
a slice of any size or aspect is therefore scored on the same field of view
and at the same relative scale as the training slices. Views are averaged
with `evaluate.combine_crops`. Inference runs under jax.jit in batches of
--batch_size slices (the last batch is padded to a power of two, so at most
log2(batch_size) + 1 shapes are compiled).

Output, one row per slice (CSV, or JSON with the same fields per slice plus
the settings used): file, slice (index within the file), score (0 = bad to
4 = excellent), uncertainty (standard deviation of the predicted score
distribution, score units), scale_score_<k> (the expected score of each of
the K distribution heads), height, width, intensity ('hu' or 'unit': how the
file's values were read), series_uid, instance_number, z_mm (DICOM), note
(assumptions made while reading, e.g. a PNG without HU) and error. Without
--output the CSV goes to stdout. Files that cannot be read get a row with
their error (and are listed on stderr); the others are still scored, and the
exit status is 2. A missing or unloadable checkpoint, or an existing output
without --overwrite, stops before scoring with status 1. Output files are
written to a temporary file and renamed, so a failed run leaves no partial
output.

--heatmap DIR writes one PNG per slice: the slice with the scored window
outlined, the per-patch scores, and the per-patch weights of the centre view
(the weights decide how much each patch counts in the slice's score).
"""
import csv
import dataclasses
import functools
import io as text_io
import json
import math
import os
import sys
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import tqdm

from mdiqa_jax import checkpointing
from mdiqa_jax import evaluate
from mdiqa_jax import files
from mdiqa_jax import io as ct_io
from mdiqa_jax import models
from mdiqa_jax.data import intensity as intensity_lib
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import preprocess

# Exit status when some inputs could not be scored (the others were).
EXIT_SOME_FAILED = 2
# Exit status when nothing was scored: bad checkpoint, output exists, no inputs.
EXIT_FATAL = 1
# Model outputs predict keeps (the per-bin log-probabilities are not reported).
OUTPUT_KEYS = ('score', 'uncertainty', 'scale_scores', 'patch_scores', 'patch_weights')
METADATA_COLUMNS = ('series_uid', 'instance_number', 'z_mm')

PredictFn = Callable[[Any, jax.Array], Dict[str, jax.Array]]


class CheckpointError(RuntimeError):
  """The --checkpoint path holds no loadable model."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a slice becomes model input (recorded in outputs and exports).

  Attributes:
    image_size: model input side, pixels.
    crop_fraction: side of the scored window as a fraction of min(H, W).
    crops: test-time views per slice, 1 (centre) or 5 (corners + centre).
    window_width, window_level: soft-tissue window applied to HU, HU.
  """
  image_size: int
  crop_fraction: float
  crops: int
  window_width: float = intensity_lib.WINDOW_WIDTH_HU
  window_level: float = intensity_lib.WINDOW_LEVEL_HU

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, crops: Optional[int] = None,
                  window_width: Optional[float] = None,
                  window_level: Optional[float] = None) -> 'Preprocessing':
    """The run's preprocessing; None arguments keep the config / window defaults."""
    preprocessing = cls(
        image_size=int(config.data.image_size),
        crop_fraction=float(config.data.get('crop_fraction', pipeline.DEFAULT_CROP_FRACTION)),
        crops=int(config.data.test_crops if crops is None else crops),
        window_width=float(intensity_lib.WINDOW_WIDTH_HU if window_width is None
                           else window_width),
        window_level=float(intensity_lib.WINDOW_LEVEL_HU if window_level is None
                           else window_level))
    preprocess.check_num_crops(preprocessing.crops)
    if not preprocessing.window_width > 0:
      raise ValueError(f'window width must be > 0 HU, got {preprocessing.window_width}.')
    return preprocessing


def load_checkpoint(path: str) -> Tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of a workdir's best checkpoint or of a step directory.

  Raises:
    CheckpointError: naming `path` when it is missing, holds no checkpoint,
      or holds parameters that do not fit the model its config describes.
  """
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such checkpoint directory.')
  try:
    return checkpointing.load_for_inference(path)
  except Exception as e:  # Orbax and the config reader raise many types.
    raise CheckpointError(f'{path}: cannot load a model checkpoint: {e}') from e


@functools.lru_cache(maxsize=4)
def make_predict_fn(model) -> PredictFn:
  """jit(params, images (n, S, S, 1) in [0, 1]) -> the OUTPUT_KEYS of the model.

  Cached per model (flax modules are hashable), so that repeated calls of the
  command in one process reuse the compiled function.
  """
  def predict(params, images):
    outputs = model.apply({'params': params}, images, train=False)
    return {key: outputs[key] for key in OUTPUT_KEYS}
  return jax.jit(predict)


def _padded_size(rows: int, batch_size: int) -> int:
  return min(batch_size, 1 << max(0, math.ceil(math.log2(rows))))


def score_images(predict_fn: PredictFn, params: Any,
                 items: Iterable[Tuple[Any, np.ndarray]], preprocessing: Preprocessing,
                 batch_size: int) -> Iterator[Tuple[Any, Dict[str, Any]]]:
  """Scores slices in batches, lazily, in order.

  Args:
    predict_fn: from `make_predict_fn`.
    params: model parameters (on device or host).
    items: (key, image) pairs; image (H, W) float32 in [0, 1] (`io.to_unit`);
      key is passed through untouched.
    preprocessing: crop and resize settings.
    batch_size: slices per jitted call (>= 1).

  Yields:
    (key, prediction) per item: 'score', 'uncertainty' (floats),
    'scale_scores' (K,) float32, and for the centre view 'patch_scores',
    'patch_weights' (h, w) float32 and 'window' (top, left, side) in pixels
    of the slice.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  crops = preprocessing.crops
  pending: List[Tuple[Any, np.ndarray, Tuple[int, int, int]]] = []

  def flush():
    views = np.stack([v for _, v, _ in pending])           # (n, crops, S, S, 1)
    rows = views.shape[0]
    padded = np.zeros((_padded_size(rows, batch_size),) + views.shape[1:], np.float32)
    padded[:rows] = views
    outputs = jax.device_get(predict_fn(params, padded.reshape((-1,) + views.shape[2:])))
    outputs = {key: value[:rows * crops].reshape((rows, crops) + value.shape[1:])
               for key, value in outputs.items()}
    combined = evaluate.combine_crops(outputs['score'], outputs['uncertainty'],
                                      outputs['scale_scores'])
    for row, (key, _, window) in enumerate(pending):
      yield key, {
          'score': float(combined['score'][row]),
          'uncertainty': float(combined['uncertainty'][row]),
          'scale_scores': np.asarray(combined['scale_scores'][row], np.float32),
          # eval_windows lists the centre window last.
          'patch_scores': outputs['patch_scores'][row, -1],
          'patch_weights': outputs['patch_weights'][row, -1],
          'window': window,
      }
    pending.clear()

  for key, image in items:
    height, width = np.shape(image)[:2]
    side = preprocess.crop_side(height, width, preprocessing.crop_fraction)
    top, left = preprocess.eval_windows(height, width, side, crops)[-1]
    views = preprocess.eval_crops(image, image_size=preprocessing.image_size,
                                  crop_fraction=preprocessing.crop_fraction, num_crops=crops)
    pending.append((key, views, (top, left, side)))
    if len(pending) == batch_size:
      yield from flush()
  if pending:
    yield from flush()


@dataclasses.dataclass(frozen=True)
class SliceKey:
  """Which slice a prediction belongs to, and what its reading assumed."""
  slice: ct_io.Slice
  note: str


def _read_slices(files: Sequence[Tuple[str, str]], intensity: str,
                 preprocessing: Preprocessing, failures: List[ct_io.InputFileError],
                 show_progress: bool) -> Iterator[Tuple[SliceKey, np.ndarray]]:
  """Reads files one by one; bad files go to `failures` and are skipped."""
  for path, kind in tqdm.tqdm(files, desc='scoring', unit='file', disable=not show_progress,
                              file=sys.stderr):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', ct_io.AssumedIntensityWarning)
      try:
        slices = ct_io.read_file(path, kind, intensity)
      except ct_io.InputFileError as e:
        failures.append(e)
        continue
    note = ' '.join(str(w.message).removeprefix(f'{path}: ') for w in caught
                    if issubclass(w.category, ct_io.AssumedIntensityWarning))
    for ct_slice in slices:
      yield SliceKey(ct_slice, note), ct_io.to_unit(
          ct_slice, preprocessing.window_width, preprocessing.window_level)


def predict_paths(config: ml_collections.ConfigDict, params: Any, paths: Sequence[str], *,
                  preprocessing: Optional[Preprocessing] = None, intensity: str = 'auto',
                  batch_size: Optional[int] = None, predict_fn: Optional[PredictFn] = None,
                  on_prediction: Optional[Callable[[SliceKey, np.ndarray, Dict[str, Any]],
                                                   None]] = None,
                  show_progress: bool = False) -> Tuple[List[Dict[str, Any]],
                                                        List[ct_io.InputFileError]]:
  """Scores every slice of the files and folders in `paths`.

  Args:
    config: the run config (data.image_size, data.test_crops, eval_batch_size).
    params: model parameters.
    paths: files or folders (`io.find_inputs`).
    preprocessing: default `Preprocessing.from_config(config)`.
    intensity: 'auto', 'hu' or 'unit' (`io.slices`).
    batch_size: slices per jitted call (default config.eval_batch_size).
    predict_fn: from `make_predict_fn` (built from config when None).
    on_prediction: called as (key, unit image (H, W), prediction) for every
      slice, e.g. to draw heatmaps.
    show_progress: tqdm bar over files on stderr.

  Returns:
    (rows, failures): one row per scored slice (`result_row`), in input
    order; one `InputFileError` per file that could not be scored.
  """
  preprocessing = preprocessing or Preprocessing.from_config(config)
  predict_fn = predict_fn or make_predict_fn(models.create_model(config))
  found = ct_io.find_inputs(paths)
  failures = list(found.failures)
  params = jax.device_put(params)
  # Each key carries its unit image along, for on_prediction.
  items = (((key, image), image) for key, image in _read_slices(
      found.files, intensity, preprocessing, failures, show_progress))
  rows = []
  for (key, image), prediction in score_images(
      predict_fn, params, items, preprocessing, batch_size or int(config.eval_batch_size)):
    rows.append(result_row(key, prediction))
    if on_prediction is not None:
      on_prediction(key, image, prediction)
  return rows, failures


def result_row(key: SliceKey, prediction: Dict[str, Any]) -> Dict[str, Any]:
  """One output row: file, slice, score, uncertainty, scale_score_<k>, ..."""
  ct_slice = key.slice
  row = {'file': ct_slice.file, 'slice': ct_slice.index, 'score': prediction['score'],
         'uncertainty': prediction['uncertainty']}
  row.update({f'scale_score_{k}': float(value)
              for k, value in enumerate(prediction['scale_scores'])})
  row.update({'height': int(ct_slice.pixels.shape[0]), 'width': int(ct_slice.pixels.shape[1]),
              'intensity': ct_slice.intensity})
  row.update({name: ct_slice.metadata.get(name) for name in METADATA_COLUMNS})
  row.update({'note': key.note, 'error': ''})
  return row


def failure_row(error: ct_io.InputFileError) -> Dict[str, Any]:
  return {'file': error.path, 'error': error.reason}


def format_csv(rows: Sequence[Dict[str, Any]]) -> str:
  """CSV text; columns in the order of the first row (scored rows come first)."""
  columns = list(rows[0]) if rows else ['file', 'slice', 'score', 'uncertainty', 'error']
  for row in rows:
    columns.extend(name for name in row if name not in columns)
  buffer = text_io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, restval='', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({name: _csv_value(value) for name, value in row.items()})
  return buffer.getvalue()


def _csv_value(value: Any) -> Any:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.6f}'
  return value


def format_json(rows: Sequence[Dict[str, Any]], failures: Sequence[Dict[str, Any]],
                settings: Dict[str, Any]) -> str:
  """JSON text: {'settings': ..., 'slices': [rows], 'failures': [{file, error}]}."""
  return json.dumps({'settings': settings, 'slices': list(rows), 'failures': list(failures)},
                    indent=2) + '\n'


def heatmap_name(file: str, index: int, root: str) -> str:
  """PNG name of a slice's heatmap: its path under `root`, flattened, + slice."""
  relative = os.path.relpath(os.path.abspath(file), root)
  stem = os.path.splitext(relative)[0].replace(os.sep, '__')
  return f'{stem}_slice{index:04d}.png'


def write_heatmap(path: str, image: np.ndarray, prediction: Dict[str, Any], title: str) -> None:
  """Slice, per-patch scores and per-patch weights of the scored window, as a PNG.

  Args:
    path: PNG to write.
    image: (H, W) float32 in [0, 1], the windowed slice.
    prediction: from `score_images` (window, patch_scores, patch_weights,
      score, uncertainty).
    title: first line of the figure title (file and slice).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.patches  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  top, left, side = prediction['window']
  extent = (left - 0.5, left + side - 0.5, top + side - 0.5, top - 0.5)
  weights = prediction['patch_weights'] / prediction['patch_weights'].sum()
  figure, axes = plt.subplots(1, 3, figsize=(13, 4.6))
  panels = [
      (None, None, 'slice (scored window outlined)'),
      (prediction['patch_scores'], dict(cmap='RdYlGn', vmin=0.0, vmax=4.0), 'patch scores'),
      (weights, dict(cmap='magma', vmin=0.0), 'patch weights (sum 1)'),
  ]
  for axis, (overlay, style, name) in zip(axes, panels):
    axis.imshow(image, cmap='gray', vmin=0.0, vmax=1.0)
    if overlay is None:
      axis.add_patch(matplotlib.patches.Rectangle(
          (left - 0.5, top - 0.5), side, side, fill=False, edgecolor='yellow', linewidth=1.2))
    else:
      shown = axis.imshow(overlay, extent=extent, alpha=0.55, interpolation='nearest', **style)
      figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    axis.set_title(name, fontsize=9)
    axis.axis('off')
  figure.suptitle(f'{title}\nscore {prediction["score"]:.3f} ± '
                  f'{prediction["uncertainty"]:.3f}', fontsize=10)
  figure.tight_layout()
  files.save_figure_atomically(figure, path, dpi=90)
  plt.close(figure)


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line of mdiqa-predict (flag help in `_define_flags`)."""
  checkpoint: str
  inputs: Sequence[str]
  output: Optional[str] = None
  heatmap: Optional[str] = None
  overwrite: bool = False
  batch_size: Optional[int] = None
  crops: Optional[int] = None
  intensity: str = 'auto'
  window_width: float = intensity_lib.WINDOW_WIDTH_HU
  window_level: float = intensity_lib.WINDOW_LEVEL_HU
  progress: bool = True


def _fatal(message: str) -> int:
  print(f'mdiqa-predict: error: {message}', file=sys.stderr)
  return EXIT_FATAL


def _check_destinations(options: Options) -> Optional[str]:
  """The reason the run must not start, or None."""
  if options.output is not None:
    if os.path.splitext(options.output)[1].lower() not in ('.csv', '.json'):
      return f'{options.output}: --output must end in .csv or .json.'
    if os.path.exists(options.output) and not options.overwrite:
      return f'{options.output}: already exists; pass --overwrite to replace it.'
  heatmap = options.heatmap
  if heatmap is not None and os.path.isdir(heatmap) and os.listdir(heatmap) and (
      not options.overwrite):
    return f'{heatmap}: heatmap folder is not empty; pass --overwrite to write into it.'
  return None


def _heatmap_writer(heatmap_dir: str, inputs: Sequence[str]):
  """on_prediction callback writing one PNG per slice into heatmap_dir."""
  os.makedirs(heatmap_dir, exist_ok=True)
  existing = [os.path.abspath(p) for p in inputs if os.path.exists(p)]
  root = os.path.commonpath(existing) if existing else os.getcwd()
  root = root if os.path.isdir(root) else os.path.dirname(root)

  def write(key: SliceKey, image: np.ndarray, prediction: Dict[str, Any]) -> None:
    name = heatmap_name(key.slice.file, key.slice.index, root)
    write_heatmap(os.path.join(heatmap_dir, name), image, prediction,
                  f'{key.slice.file} [slice {key.slice.index}]')
  return write


def predict_command(options: Options) -> int:
  """Runs mdiqa-predict; returns the exit status (0, EXIT_SOME_FAILED or EXIT_FATAL)."""
  problem = _check_destinations(options)
  if problem:
    return _fatal(problem)
  try:
    config, params = load_checkpoint(options.checkpoint)
    preprocessing = Preprocessing.from_config(
        config, crops=options.crops, window_width=options.window_width,
        window_level=options.window_level)
  except (CheckpointError, ValueError) as e:
    return _fatal(str(e))
  rows, failures = predict_paths(
      config, params, options.inputs, preprocessing=preprocessing,
      intensity=options.intensity, batch_size=options.batch_size,
      on_prediction=_heatmap_writer(options.heatmap, options.inputs) if options.heatmap
      else None, show_progress=options.progress)
  failed = [failure_row(e) for e in failures]
  output = options.output
  if output is not None and output.lower().endswith('.json'):
    settings = dict(dataclasses.asdict(preprocessing),
                    checkpoint=os.path.abspath(options.checkpoint),
                    intensity=options.intensity, inputs=list(options.inputs))
    text = format_json(rows, failed, settings)
  else:
    text = format_csv(rows + failed)
  if output is None:
    sys.stdout.write(text)
  else:
    files.write_text_atomically(output, text)
  for error in failures:
    print(f'mdiqa-predict: failed: {error}', file=sys.stderr)
  print(f'mdiqa-predict: scored {len(rows)} slices; {len(failures)} files failed'
        + (f'; wrote {output}' if output else ''), file=sys.stderr)
  return EXIT_SOME_FAILED if failures else 0


def _define_flags() -> Dict[str, Any]:
  """Defines the flags when run as a command (importing predict defines none)."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'Training workdir (its best checkpoint) or a step directory '
          '<workdir>/checkpoints/<step>.'),
      'output': flags.DEFINE_string(
          'output', None, 'Output file, .csv or .json (default: CSV on stdout).'),
      'heatmap': flags.DEFINE_string(
          'heatmap', None, 'Folder for one PNG of patch scores and weights per slice.'),
      'overwrite': flags.DEFINE_bool(
          'overwrite', False, 'Replace an existing --output file and write into a non-empty '
          '--heatmap folder.'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', None, 'Slices per jitted call (default: config.eval_batch_size).'),
      'crops': flags.DEFINE_integer(
          'crops', None, 'Test-time views per slice, 1 (centre) or 5 (corners + centre); '
          'default config.data.test_crops.'),
      'intensity': flags.DEFINE_enum(
          'intensity', 'auto', ct_io.INTENSITY_MODES,
          'How TIFF / PNG / .npy values are read: auto (floats in [0, 1] are windowed, other '
          'floats and signed integers are HU, unsigned integers are windowed greyscale), hu, '
          'or unit. DICOM is always rescaled to HU.'),
      'window_width': flags.DEFINE_float(
          'window_width', intensity_lib.WINDOW_WIDTH_HU, 'Window width applied to HU, HU.'),
      'window_level': flags.DEFINE_float(
          'window_level', intensity_lib.WINDOW_LEVEL_HU, 'Window level applied to HU, HU.'),
      'progress': flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.'),
  }


def run():
  """Console entry point `mdiqa-predict`."""
  holders = _define_flags()

  def main(argv: Sequence[str]) -> int:
    if not holders['checkpoint'].value:
      raise app.UsageError('--checkpoint is required.')
    if len(argv) < 2:
      raise app.UsageError('Give at least one INPUT file or folder.')
    checkpointing.quiet_library_logging()
    return predict_command(Options(inputs=list(argv[1:]), **{
        name: holder.value for name, holder in holders.items()}))

  app.run(main)


if __name__ == '__main__':
  run()
