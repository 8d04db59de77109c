r"""Scoring CT scans: a quality score and its uncertainty for every slice.

  mdiqa-predict [--checkpoint DIR] INPUT... [--output FILE.csv|FILE.json]
      [--heatmap DIR] [--overwrite] [--batch_size N] [--pixel_mm MM]
      [--intensity auto|hu|unit] [--window_width 350 --window_level 40]
  mdiqa-predict [--checkpoint DIR] --compare BEFORE/ AFTER/
      [--output FILE.csv|FILE.json] [--plot FILE.png]
  python -m mdiqa_jax.predict ...        (the same)

INPUTs are files or folders of DICOM, TIFF, PNG or .npy files (`mdiqa_jax.io`:
how each is read as HU or as windowed intensities, how folders and DICOM
series are ordered). --checkpoint is a training workdir (its best checkpoint)
or a step directory <workdir>/checkpoints/<step>; without it the model
bundled with the package is used (`inference.bundled`: the README's main
job), and stderr says so.

--compare scores two folders and pairs their files by relative path
(`inference.compare`): one row per slice pair (score_before, score_after,
change), the mean change, the fraction improved and a Wilcoxon p-value on
stderr, and with --plot a scatter of after vs before and a histogram of the
changes.

Each slice is scored the way evaluation scores a dataset slice, whole and at
native resolution (`inference.scoring`): HU are windowed to [0, 1]
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
do not restore, `inference.checkpoint`), an existing
output without --overwrite, or an output that cannot be written, stops with
status 1 and one line on stderr. Output files are written to a temporary
file and renamed, so a failed run leaves no partial output.

--heatmap DIR writes one PNG per slice (`inference.heatmaps`); a heatmap that
cannot be written is an error row of its file (the scores are still written).

This module is the command only (flags, checks of the destinations, output);
the library is `mdiqa_jax.inference` (`paths.predict_paths`, `rows`,
`heatmaps`, `checkpoint.load_checkpoint`).
"""
import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from mdiqa_jax import cli
from mdiqa_jax import command_errors
from mdiqa_jax import files
from mdiqa_jax import io as ct_io
from mdiqa_jax.data import intensity as intensity_lib
from mdiqa_jax.inference import bundled
from mdiqa_jax.inference import compare
from mdiqa_jax.inference import heatmaps
from mdiqa_jax.inference import rows as rows_lib
from mdiqa_jax.inference.checkpoint import CheckpointError, load_checkpoint
from mdiqa_jax.inference.heatmaps import heatmap_name, heatmap_source
from mdiqa_jax.inference.paths import predict_paths
from mdiqa_jax.inference.preprocessing import Preprocessing

# Exit status when some inputs could not be scored (the others were).
EXIT_SOME_FAILED = 2
# Exit status when nothing was scored: bad checkpoint, output exists, no inputs.
EXIT_FATAL = 1
# The library names this command calls, importable from here as before.
__all__ = ['CheckpointError', 'EXIT_FATAL', 'EXIT_SOME_FAILED', 'Options', 'Preprocessing',
           'heatmap_name', 'heatmap_source', 'load_checkpoint', 'predict_command',
           'predict_paths', 'main', 'run']


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line of mdiqa-predict (flag help in `_define_flags`)."""
  checkpoint: Optional[str]
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
  compare: bool = False
  plot: Optional[str] = None


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
  if options.compare and heatmap is not None:
    return '--heatmap draws single slices; with --compare, use --plot for the comparison.'
  if options.plot is not None:
    if not options.compare:
      return '--plot draws the comparison of --compare BEFORE/ AFTER/; use --heatmap for slices.'
    if os.path.exists(options.plot) and not options.overwrite:
      return f'{options.plot}: already exists; pass --overwrite to replace it.'
  return None


def _load_model(checkpoint: Optional[str]):
  """(config, params, source) of --checkpoint, or of the bundled model when None."""
  if checkpoint is not None:
    config, params = load_checkpoint(checkpoint)
    return config, params, os.path.abspath(checkpoint)
  config, params, record = bundled.load()
  print(f'mdiqa-predict: no --checkpoint; using the bundled model (test SROCC '
        f'{record["test_metrics"]["srocc"]:.3f} on {record["dataset"]["name"]}, sha256 '
        f'{record["sha256"][:12]}...).', file=sys.stderr)
  return config, params, 'bundled:' + record['sha256']


def _write_output(output: Optional[str], text: str) -> Optional[int]:
  """Writes `text` to the output file (atomically) or stdout; an exit status on failure."""
  if output is None:
    sys.stdout.write(text)
    return None
  try:
    files.write_text_atomically(output, text)
  except OSError as e:
    reason = 'disk full' if command_errors.disk_full(e) else 'cannot write it'
    return _fatal(f'{output}: {reason}: {e}')
  return None


def predict_command(options: Options) -> int:
  """Runs mdiqa-predict; returns the exit status (0, EXIT_SOME_FAILED or EXIT_FATAL)."""
  problem = _check_destinations(options)
  if problem:
    return _fatal(problem)
  try:
    config, params, source = _load_model(options.checkpoint)
    preprocessing = Preprocessing.from_config(
        config, window_width=options.window_width, window_level=options.window_level,
        assumed_pixel_mm=options.pixel_mm)
  except (CheckpointError, bundled.BundledModelError, ValueError) as e:
    return _fatal(str(e))
  if options.compare:
    return _compare_command(options, config, params, preprocessing)
  heatmap_failures: List[ct_io.InputFileError] = []
  try:
    on_prediction = heatmaps.heatmap_writer(options.heatmap, options.inputs,
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
  failed = [rows_lib.failure_row(e) for e in failures]
  output = options.output
  if output is not None and output.lower().endswith('.json'):
    settings = dict(dataclasses.asdict(preprocessing),
                    checkpoint=source,
                    intensity=options.intensity, inputs=list(options.inputs))
    text = rows_lib.format_json(rows, failed, settings)
  else:
    text = rows_lib.format_csv(rows + failed)
  status = _write_output(output, text)
  if status is not None:
    return status
  for error in failures:
    print(f'mdiqa-predict: failed: {command_errors.one_line(error)}', file=sys.stderr)
  print(f'mdiqa-predict: scored {_count(len(rows), "slice")}; '
        f'{_count(len(failures), "file")} failed' + (f'; wrote {output}' if output else ''),
        file=sys.stderr)
  return EXIT_SOME_FAILED if failures else 0


def _count(number: int, noun: str) -> str:
  """'1 slice', '2 slices'."""
  return f'{number} {noun}' + ('' if number == 1 else 's')


def _compare_command(options: Options, config, params, preprocessing: Preprocessing) -> int:
  """--compare BEFORE/ AFTER/: paired scores, summary on stderr, optional plot."""
  if len(options.inputs) != 2:
    return _fatal(f'--compare takes two folders (before, after), got {len(options.inputs)} '
                  'inputs.')
  before, after = options.inputs

  def score_paths(paths):
    return predict_paths(config, params, paths, preprocessing=preprocessing,
                         intensity=options.intensity, batch_size=options.batch_size,
                         pixel_mm=options.pixel_mm, show_progress=options.progress)
  try:
    result = compare.compare_folders(before, after, score_paths)
  except ct_io.InputFileError as e:
    return _fatal(str(e))
  failed = result.failures
  if options.output is not None and options.output.lower().endswith('.json'):
    text = rows_lib.format_json(result.rows, failed, dict(
        summary=result.summary, before=before, after=after, only_before=result.only_before,
        only_after=result.only_after))
  else:
    text = rows_lib.format_csv(result.rows + failed)
  status = _write_output(options.output, text)
  if status is not None:
    return status
  if options.plot and result.rows:
    try:
      compare.plot(result, options.plot, before, after)
    except OSError as e:
      return _fatal(f'{options.plot}: cannot write the plot: {e}')
  for failure in failed:
    print(f'mdiqa-predict: failed: {failure["file"]}: {failure["error"]}', file=sys.stderr)
  print('mdiqa-predict: ' + compare.format_summary(result, before, after).replace(
      '\n', '\nmdiqa-predict: '), file=sys.stderr)
  return EXIT_SOME_FAILED if failed or not result.rows else 0


def _define_flags() -> Dict[str, Any]:
  """Defines the flags when run as a command (importing predict defines none)."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'Training workdir (its best checkpoint) or a step directory '
          '<workdir>/checkpoints/<step> (default: the model bundled with the package).'),
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
      'compare': flags.DEFINE_bool(
          'compare', False, 'Score two folders BEFORE/ AFTER/ and report the change per '
          'slice pair (files paired by relative path).'),
      'plot': flags.DEFINE_string(
          'plot', None, 'With --compare: PNG of score after vs before and of the changes.'),
  }


def main(argv: Sequence[str], values: Dict[str, Any]) -> int:
  """The command, given its flag values; returns the exit status."""
  if len(argv) < 2:
    raise app.UsageError('Give at least one INPUT file or folder.')
  return predict_command(Options(inputs=list(argv[1:]), **values))


def run():
  """Console entry point `mdiqa-predict`."""
  cli.run_command('mdiqa-predict', _define_flags, main)


if __name__ == '__main__':
  run()
