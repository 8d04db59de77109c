r"""Scoring CT scans: a quality score and its uncertainty for every slice.

  mdiqa-predict --checkpoint DIR INPUT... [--output FILE.csv|FILE.json]
      [--heatmap DIR] [--overwrite] [--batch_size N] [--pixel_mm MM]
      [--intensity auto|hu|unit] [--window_width 350 --window_level 40]
  python -m mdiqa_jax.predict ...        (the same)

INPUTs are files or folders of DICOM, TIFF, PNG or .npy files (`mdiqa_jax.io`:
how each is read as HU or as windowed intensities, how folders and DICOM
series are ordered). --checkpoint is a training workdir (its best checkpoint)
or a step directory <workdir>/checkpoints/<step>.

Each slice is scored the way evaluation scores a dataset slice, whole and at
native resolution (`slice_scoring`): HU are windowed to [0, 1]
(`intensity.window_to_unit`, width 350 / level 40 HU unless overridden); the
slice's pixel spacing comes from the file (DICOM PixelSpacing, or the
PixelMeasuresSequence of enhanced CT), else from --pixel_mm, else the
training data's spacing (config.data.pixel_mm), and the row's note says which;
a slice whose spacing lies outside the range the model was trained on
(config.data.pixel_mm_range) is resampled to the nearest end of that range,
and the note says so; then every tile of the training size that holds body
is scored, and the patch predictions are pooled over the whole slice by their
learned weights and body fraction. Tiles run under jax.jit in batches of
--batch_size (default config.eval_batch_size; the last batch is padded to a
power of two), and a slice's score does not depend on the batch size.

Output, one row per slice (CSV, or JSON with the same fields per slice plus
the settings used): file, slice (index within the file), score (0 = bad to
4 = excellent), uncertainty (standard deviation of the predicted score
distribution, score units), scale_score_<k> (the expected score of each of
the K distribution heads), height, width, pixel_mm (the spacing scored at,
mm; row x column when they differ), num_tiles, intensity ('hu' or 'unit': how
the file's values were read), series_uid, instance_number, z_mm (DICOM), note
(assumptions made: spacing assumed or resampled, a PNG without HU, ...) and
error. Without --output the CSV goes to stdout. Every problem with one file
is a row with its error (and a line on stderr), never the end of the run:
unreadable, truncated, malformed or oversized files (`mdiqa_jax.io` checks
every size a header declares before allocating it), missing decoders (named),
a slice whose spacing would resample it beyond the size limit, any other
error while reading; the other files are still scored, and the exit status
is 2. What the readers' libraries warn or log while reading a scored file
becomes part of its row's note. A path that holds no input file at all
(an empty folder, only unsupported files) is reported and the exit status is
2. A missing or unloadable checkpoint (a workdir falls back past steps that
do not restore, `checkpointing.load_inference_checkpoint`), an existing
output without --overwrite, or an output that cannot be written, stops with
status 1 and one line on stderr. Output files are written to a temporary
file and renamed, so a failed run leaves no partial output.

--heatmap DIR writes one PNG per slice: the slice as scored, the per-patch
scores over the whole slice, and each region's share of the slice score's
weight (patch weights times body fraction). Its name is the file's path
under the inputs' common folder, percent-encoded (`urllib.parse.quote`, so
'/' becomes %2F and the extension stays), then `_slice<NNNN>.png`: names are
unique and `heatmap_source` turns one back into (path, slice). A heatmap that
cannot be written is an error row of its file (the scores are still written).
"""
import csv
import dataclasses
import io as text_io
import json
import math
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
import urllib.parse

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import tqdm

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import files
from mdiqa_jax import io as ct_io
from mdiqa_jax import models
from mdiqa_jax import slice_scoring
from mdiqa_jax.data import intensity as intensity_lib

# Exit status when some inputs could not be scored (the others were).
EXIT_SOME_FAILED = 2
# Exit status when nothing was scored: bad checkpoint, output exists, no inputs.
EXIT_FATAL = 1
METADATA_COLUMNS = ('series_uid', 'instance_number', 'z_mm')
# The preprocessing spec lives with the one scoring path; predict re-exports it.
Preprocessing = slice_scoring.Preprocessing


# The --checkpoint path holds no loadable model.
CheckpointError = checkpointing.CheckpointError


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


@dataclasses.dataclass(frozen=True)
class SliceKey:
  """Which slice a prediction belongs to, and what its reading assumed."""
  slice: ct_io.Slice
  note: str


def _spacing_of(ct_slice: ct_io.Slice, preprocessing: Preprocessing,
                pixel_mm_flag: Optional[float]) -> Tuple[Tuple[float, float], str]:
  """(row, column) spacing to score a slice at, and a note when it was assumed."""
  if ct_slice.pixel_mm is not None:
    return ct_slice.pixel_mm, ''
  spacing = preprocessing.assumed_pixel_mm
  source = '--pixel_mm' if pixel_mm_flag is not None else 'the training data\'s spacing'
  return (spacing, spacing), f'no pixel spacing in the file; assumed {spacing:.3g} mm ({source})'


def _read_file(path: str, kind: str, intensity: str) -> Tuple[List[ct_io.Slice], List[str]]:
  """(slices, notes) of one file; every failure becomes an `InputFileError`."""
  try:
    with ct_io.capture_messages() as messages:
      slices = ct_io.read_file(path, kind, intensity)
  except ct_io.InputFileError:
    raise
  except MemoryError:
    raise ct_io.InputFileError(path, 'out of memory while reading the file.') from None
  except Exception as e:  # A reader's library failing in a way it does not document.
    raise ct_io.InputFileError(path, f'cannot read the file ({type(e).__name__}: '
                               f'{command_errors.one_line(e)}).') from e
  notes = list(dict.fromkeys(command_errors.one_line(m).removeprefix(f'{path}: ')
                             for m in messages))
  return slices, notes


def _check_scored_size(ct_slice: ct_io.Slice, spacing: Tuple[float, float],
                       preprocessing: Preprocessing) -> None:
  """Refuses a slice that its spacing would resample to an absurd size.

  `preprocess.fit_spacing` clips the spacing into the trained range, so a
  wrong PixelSpacing (0.0001 or 1000 mm) would resample a slice to less than a
  pixel or to billions of them.
  """
  low, high = preprocessing.pixel_mm_range
  height, width = ct_slice.pixels.shape
  scored = [side * mm / min(max(mm, low), high)
            for side, mm in ((height, spacing[0]), (width, spacing[1]))]
  if min(scored) < ct_io.MIN_SIDE or scored[0] * scored[1] > ct_io.MAX_PIXELS_PER_FILE:
    raise ct_io.InputFileError(
        ct_slice.file, f'slice {ct_slice.index}: a pixel spacing of {spacing[0]:g} x '
        f'{spacing[1]:g} mm would resample its {height} x {width} pixels to '
        f'{scored[0]:.0f} x {scored[1]:.0f} for the model\'s {low:g}-{high:g} mm; is the '
        'spacing right?')


def _read_slices(files: Sequence[Tuple[str, str]], intensity: str,
                 preprocessing: Preprocessing, pixel_mm_flag: Optional[float],
                 failures: List[ct_io.InputFileError], show_progress: bool
                 ) -> Iterator[Tuple[SliceKey, np.ndarray, Tuple[float, float]]]:
  """Reads files one by one; bad files go to `failures` and are skipped."""
  for path, kind in tqdm.tqdm(files, desc='scoring', unit='file', disable=not show_progress,
                              file=sys.stderr):
    try:
      slices, notes = _read_file(path, kind, intensity)
      read = []
      for ct_slice in slices:
        spacing, spacing_note = _spacing_of(ct_slice, preprocessing, pixel_mm_flag)
        _check_scored_size(ct_slice, spacing, preprocessing)
        read.append((ct_slice, spacing, spacing_note))
    except ct_io.InputFileError as e:
      failures.append(e)
      continue
    for ct_slice, spacing, spacing_note in read:
      note = '; '.join(notes + ([spacing_note] if spacing_note else []))
      yield SliceKey(ct_slice, note), ct_io.to_unit(
          ct_slice, preprocessing.window_width, preprocessing.window_level), spacing


def predict_paths(config: ml_collections.ConfigDict, params: Any, paths: Sequence[str], *,
                  preprocessing: Optional[Preprocessing] = None, intensity: str = 'auto',
                  batch_size: Optional[int] = None, pixel_mm: Optional[float] = None,
                  predict_fn: Optional[slice_scoring.TilePredictFn] = None,
                  on_prediction: Optional[Callable[[SliceKey, Dict[str, Any]], None]] = None,
                  show_progress: bool = False) -> Tuple[List[Dict[str, Any]],
                                                        List[ct_io.InputFileError]]:
  """Scores every slice of the files and folders in `paths`.

  Args:
    config: the run config (data, model.vit.patch_size, eval_batch_size).
    params: model parameters.
    paths: files or folders (`io.find_inputs`).
    preprocessing: default `Preprocessing.from_config(config,
      assumed_pixel_mm=pixel_mm)`.
    intensity: 'auto', 'hu' or 'unit' (`io.slices`).
    batch_size: tiles per jitted call (default config.eval_batch_size).
    pixel_mm: spacing of files that carry none (default: the training data's).
    predict_fn: from `slice_scoring.make_tile_predict_fn` (built from config
      when None).
    on_prediction: called as (key, prediction) for every slice; the
      prediction then carries the whole-slice maps and the image as scored
      (`slice_scoring.score_slices(with_maps=True)`), e.g. to draw heatmaps.
    show_progress: tqdm bar over files on stderr.

  Returns:
    (rows, failures): one row per scored slice (`result_row`), in input
    order; one `InputFileError` per file that could not be scored.
  """
  preprocessing = preprocessing or Preprocessing.from_config(config, assumed_pixel_mm=pixel_mm)
  predict_fn = predict_fn or slice_scoring.make_tile_predict_fn(models.create_model(config))
  found = ct_io.find_inputs(paths)
  failures = list(found.failures)
  params = jax.device_put(params)
  items = _read_slices(found.files, intensity, preprocessing, pixel_mm, failures,
                       show_progress)
  rows = []
  for key, prediction in slice_scoring.score_slices(
      predict_fn, params, items, preprocessing,
      tile_batch=batch_size or int(config.eval_batch_size),
      with_maps=on_prediction is not None):
    rows.append(result_row(key, prediction))
    if on_prediction is not None:
      on_prediction(key, prediction)
  return rows, failures


def _spacing_text(spacing: Tuple[float, float]) -> str:
  rows_mm, cols_mm = spacing
  return f'{rows_mm:.6g}' if math.isclose(rows_mm, cols_mm, rel_tol=1e-3) else (
      f'{rows_mm:.6g}x{cols_mm:.6g}')


def result_row(key: SliceKey, prediction: Dict[str, Any]) -> Dict[str, Any]:
  """One output row: file, slice, score, uncertainty, scale_score_<k>, ..."""
  ct_slice = key.slice
  row = {'file': ct_slice.file, 'slice': ct_slice.index, 'score': prediction['score'],
         'uncertainty': prediction['uncertainty']}
  row.update({f'scale_score_{k}': float(value)
              for k, value in enumerate(prediction['scale_scores'])})
  row.update({'height': int(ct_slice.pixels.shape[0]), 'width': int(ct_slice.pixels.shape[1]),
              'pixel_mm': _spacing_text(prediction['pixel_mm']),
              'num_tiles': int(prediction['num_tiles']), 'intensity': ct_slice.intensity})
  row.update({name: ct_slice.metadata.get(name) for name in METADATA_COLUMNS})
  row.update({'note': '; '.join(([key.note] if key.note else []) + prediction['notes']),
              'error': ''})
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


_HEATMAP_SUFFIX = '_slice{index:04d}.png'


def heatmap_name(file: str, index: int, root: str) -> str:
  """PNG name of a slice's heatmap: its path under `root`, percent-encoded, + slice.

  Unique per (file, slice) and reversible (`heatmap_source`): the extension
  stays, and '/' and '%' are encoded, so 'a/x.npy', 'a__x.npy' and 'a/x.dcm'
  give three names.
  """
  relative = os.path.relpath(os.path.abspath(file), root)
  return urllib.parse.quote(relative, safe='') + _HEATMAP_SUFFIX.format(index=index)


def heatmap_source(name: str, root: str) -> Tuple[str, int]:
  """(file path, slice index) of a name made by `heatmap_name(file, index, root)`."""
  stem, _, slice_part = name.rpartition('_slice')
  return os.path.join(root, urllib.parse.unquote(stem)), int(slice_part.removesuffix('.png'))


def write_heatmap(path: str, prediction: Dict[str, Any], title: str) -> None:
  """The slice as scored, its patch scores and weight shares, as a PNG.

  Args:
    path: PNG to write.
    prediction: from `slice_scoring.score_slices(with_maps=True)` (image,
      score_map, weight_map, score, uncertainty, pixel_mm).
    title: first line of the figure title (file and slice).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 3, figsize=(13, 4.6))
  panels = [
      (None, None, f'slice as scored ({_spacing_text(prediction["pixel_mm"])} mm pixels)'),
      (prediction['score_map'], dict(cmap='RdYlGn', vmin=0.0, vmax=4.0), 'patch scores'),
      (prediction['weight_map'] / max(float(prediction['weight_map'].max()), 1e-30),
       dict(cmap='magma', vmin=0.0, vmax=1.0), 'share of the score (relative)'),
  ]
  for axis, (overlay, style, name) in zip(axes, panels):
    axis.imshow(prediction['image'], cmap='gray', vmin=0.0, vmax=1.0)
    if overlay is not None:
      shown = axis.imshow(overlay, alpha=0.55, interpolation='nearest', **style)
      figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    axis.set_title(name, fontsize=9)
    axis.axis('off')
  figure.suptitle(f'{title}\nscore {prediction["score"]:.3f} ± '
                  f'{prediction["uncertainty"]:.3f} ({prediction["num_tiles"]} tiles)',
                  fontsize=10)
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
  pixel_mm: Optional[float] = None
  intensity: str = 'auto'
  window_width: float = intensity_lib.WINDOW_WIDTH_HU
  window_level: float = intensity_lib.WINDOW_LEVEL_HU
  progress: bool = True


def _fatal(message: str) -> int:
  print(f'mdiqa-predict: error: {command_errors.one_line(message)}', file=sys.stderr)
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


def _heatmap_writer(heatmap_dir: str, inputs: Sequence[str],
                    failures: List[ct_io.InputFileError]):
  """on_prediction callback writing one PNG per slice into heatmap_dir.

  A heatmap that cannot be written (full disk, a name the file system
  refuses) is appended to `failures` and the run goes on.
  """
  os.makedirs(heatmap_dir, exist_ok=True)
  existing = [os.path.abspath(p) for p in inputs if os.path.exists(p)]
  root = os.path.commonpath(existing) if existing else os.getcwd()
  root = root if os.path.isdir(root) else os.path.dirname(root)

  def write(key: SliceKey, prediction: Dict[str, Any]) -> None:
    name = heatmap_name(key.slice.file, key.slice.index, root)
    try:
      write_heatmap(os.path.join(heatmap_dir, name), prediction,
                    f'{key.slice.file} [slice {key.slice.index}]')
    except (OSError, ValueError) as e:  # ValueError: matplotlib on an unusable path.
      failures.append(ct_io.InputFileError(
          key.slice.file, f'slice {key.slice.index}: scored, but its heatmap '
          f'{os.path.join(heatmap_dir, name)} cannot be written: {command_errors.one_line(e)}'))
  return write


def predict_command(options: Options) -> int:
  """Runs mdiqa-predict; returns the exit status (0, EXIT_SOME_FAILED or EXIT_FATAL)."""
  problem = _check_destinations(options)
  if problem:
    return _fatal(problem)
  try:
    config, params = load_checkpoint(options.checkpoint)
    preprocessing = Preprocessing.from_config(
        config, window_width=options.window_width, window_level=options.window_level,
        assumed_pixel_mm=options.pixel_mm)
  except (CheckpointError, ValueError) as e:
    return _fatal(str(e))
  heatmap_failures: List[ct_io.InputFileError] = []
  try:
    on_prediction = _heatmap_writer(options.heatmap, options.inputs,
                                    heatmap_failures) if options.heatmap else None
  except OSError as e:
    return _fatal(f'{options.heatmap}: cannot create the heatmap folder: {e}')
  rows, failures = predict_paths(
      config, params, options.inputs, preprocessing=preprocessing,
      intensity=options.intensity, batch_size=options.batch_size, pixel_mm=options.pixel_mm,
      on_prediction=on_prediction, show_progress=options.progress)
  failures = failures + heatmap_failures
  if not rows and not failures:
    print(f'mdiqa-predict: error: no input file found in {", ".join(options.inputs)}: '
          'expected DICOM, TIFF, PNG or .npy files (hidden files, other formats and '
          'non-regular files are skipped).', file=sys.stderr)
    return EXIT_SOME_FAILED
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
    try:
      files.write_text_atomically(output, text)
    except OSError as e:
      reason = 'disk full' if command_errors.disk_full(e) else 'cannot write it'
      return _fatal(f'{output}: {reason}: {e}')
  for error in failures:
    print(f'mdiqa-predict: failed: {command_errors.one_line(error)}', file=sys.stderr)
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
          'batch_size', None, 'Tiles per jitted call (default: config.eval_batch_size); '
          'scores do not depend on it.'),
      'pixel_mm': flags.DEFINE_float(
          'pixel_mm', None, 'Pixel spacing (mm) of TIFF / PNG / .npy inputs, which carry '
          "none (default: the training data's, config.data.pixel_mm). DICOM spacing is "
          'read from the file.'),
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

  command_errors.run(main, 'mdiqa-predict')


if __name__ == '__main__':
  run()
