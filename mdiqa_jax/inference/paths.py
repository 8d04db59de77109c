"""The scoring loop over files and folders: `predict_paths` (mdiqa-predict's library).

INPUTs are files or folders of DICOM, TIFF, PNG or .npy files (`mdiqa_jax.io`:
how each is read as HU or as windowed intensities, how folders and DICOM
series are ordered). Each slice is windowed to [0, 1], given its pixel spacing
(the file's, else --pixel_mm, else the training data's; the row's note says
which) and scored by `scoring.score_slices`. Every problem with one file
becomes an `InputFileError` in the failures, never the end of the run; what
the readers' libraries warn while reading becomes part of the row's note.
"""
import dataclasses
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import tqdm

from mdiqa_jax import command_errors
from mdiqa_jax import io as ct_io
from mdiqa_jax import models
from mdiqa_jax.inference import rows as rows_lib
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference.predict_fn import PredictFn
from mdiqa_jax.inference.preprocessing import Preprocessing


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
                  predict_fn: Optional[PredictFn] = None,
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
    predict_fn: from `scoring.make_tile_predict_fn` (built from config when
      None).
    on_prediction: called as (key, prediction) for every slice; the
      prediction then carries the whole-slice maps and the image as scored
      (`scoring.score_slices(with_maps=True)`), e.g. to draw heatmaps.
    show_progress: tqdm bar over files on stderr.

  Returns:
    (rows, failures): one row per scored slice (`rows.result_row`), in input
    order; one `InputFileError` per file that could not be scored.
  """
  preprocessing = preprocessing or Preprocessing.from_config(config, assumed_pixel_mm=pixel_mm)
  predict_fn = predict_fn or scoring.make_tile_predict_fn(models.create_model(config))
  found = ct_io.find_inputs(paths)
  failures = list(found.failures)
  params = jax.device_put(params)
  items = _read_slices(found.files, intensity, preprocessing, pixel_mm, failures,
                       show_progress)
  rows = []
  for key, prediction in scoring.score_slices(
      predict_fn, params, items, preprocessing,
      tile_batch=batch_size or int(config.eval_batch_size),
      with_maps=on_prediction is not None):
    rows.append(rows_lib.result_row(key, prediction))
    if on_prediction is not None:
      on_prediction(key, prediction)
  return rows, failures
