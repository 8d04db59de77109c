"""DICOM files (pydicom): single-frame slices, multi-frame files, and series.

Pixels become Hounsfield units with the Modality LUT's linear rescale,
HU = stored value x RescaleSlope + RescaleIntercept, taken per frame from
(in order of precedence) the frame's PixelValueTransformationSequence in
PerFrameFunctionalGroupsSequence, the one in SharedFunctionalGroupsSequence
(enhanced multi-frame CT), or the top-level RescaleSlope / RescaleIntercept;
with none of them the stored values are HU (slope 1, intercept 0, as the
standard prescribes). Files with a Modality LUT Sequence (a non-linear lookup
table, which CT does not use) are refused. Modalities other than CT are read
the same way, with a warning, since the model was trained on CT only.

A series (a folder of single-frame files) is ordered by position along the
slice normal (ImagePositionPatient projected on the cross product of the
ImageOrientationPatient row and column directions) when every file has it,
else by InstanceNumber when every file has it, else by path (`series_order`).

Pixel spacing (mm, row then column) is read per frame from the frame's
PixelMeasuresSequence (per-frame, then shared functional groups: enhanced
CT), else the top-level PixelSpacing; a missing, malformed or non-positive
value leaves the slice without one (the scorer assumes a spacing and says
so in the row's note).
"""
import math
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.dcm', '.dicom', '.ima')
# Byte offset of the 'DICM' magic after the 128-byte preamble (PS3.10 7.1).
_MAGIC_OFFSET = 128
_PIXEL_KEYWORDS = ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData')


def has_dicom_magic(path: str) -> bool:
  """True when the file has a DICOM Part 10 header (preamble + 'DICM')."""
  try:
    with open(path, 'rb') as f:
      f.seek(_MAGIC_OFFSET)
      return f.read(4) == b'DICM'
  except OSError:
    return False


def read_header(path: str) -> Dataset:
  """Reads a DICOM file's attributes without its pixels.

  Raises:
    InputFileError: naming `path` when it is not a readable DICOM file.
  """
  return _dcmread(path, stop_before_pixels=True)


def _dcmread(path: str, stop_before_pixels: bool) -> Dataset:
  try:
    return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
  except pydicom.errors.InvalidDicomError as e:
    raise slices_lib.InputFileError(path, f'not a DICOM file: {e}') from e
  except Exception as e:  # pydicom raises many types for truncated or corrupt files.
    raise slices_lib.InputFileError(path, f'cannot read as DICOM: {e}') from e


def read(path: str) -> list[slices_lib.Slice]:
  """Reads every frame of one DICOM file as a `Slice` in HU.

  Returns:
    One `Slice` per frame (index = frame number, 0 for single-frame files),
    intensity HU, metadata: 'series_uid' (str), 'instance_number' (int or
    None), 'z_mm' (position along the slice normal, or None), 'slope',
    'intercept'.

  Raises:
    InputFileError: naming `path` when it is not a readable DICOM file, holds
      no image (e.g. a structured report or DICOMDIR), holds a colour image,
      uses a Modality LUT Sequence, cannot be decompressed, has a zero or
      non-finite rescale, or has the wrong shape.
  """
  ds = _dcmread(path, stop_before_pixels=False)
  if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
    sop_class = ds.get('SOPClassUID')
    name = getattr(sop_class, 'name', sop_class) or 'unknown SOP class'
    raise slices_lib.InputFileError(path, f'DICOM file without pixel data ({name}).')
  if int(ds.get('SamplesPerPixel', 1)) != 1:
    raise slices_lib.InputFileError(
        path, f'{ds.SamplesPerPixel} samples per pixel ({ds.get("PhotometricInterpretation")}); '
        'expected a greyscale CT image.')
  if ds.get('ModalityLUTSequence'):
    raise slices_lib.InputFileError(
        path, 'uses a Modality LUT Sequence; only the linear RescaleSlope / '
        'RescaleIntercept mapping to HU is supported.')
  modality = ds.get('Modality', '')
  if modality != 'CT':
    warnings.warn(f'{path}: Modality {modality!r}, not CT; rescaled values taken as HU.',
                  slices_lib.AssumedIntensityWarning, stacklevel=2)
  try:
    stored = ds.pixel_array
  except Exception as e:  # Missing decoders, truncated pixel data, bad attributes.
    raise slices_lib.InputFileError(path, f'cannot decode the DICOM pixel data: {e}') from e
  num_frames = int(ds.get('NumberOfFrames', 1) or 1)
  frames = np.asarray(stored).reshape((num_frames,) + np.shape(stored)[-2:])
  frames = slices_lib.as_stack(path, frames)
  hu = np.empty(frames.shape, np.float32)
  metadata, spacings = [], []
  for frame in range(num_frames):
    spacings.append(_pixel_spacing(ds, frame))
    slope, intercept = _rescale(path, ds, frame)
    hu[frame] = frames[frame].astype(np.float64) * slope + intercept
    metadata.append({
        'series_uid': str(ds.get('SeriesInstanceUID', '')),
        'instance_number': _optional_int(ds.get('InstanceNumber')),
        'z_mm': _position_along_normal(ds, frame),
        'slope': slope,
        'intercept': intercept,
    })
  return slices_lib.slices_of_stack(path, hu, slices_lib.HU, metadata, spacings)


def _pixel_spacing(ds: Dataset, frame: int) -> Optional[tuple[float, float]]:
  """(row, column) spacing of one frame, mm, or None (module docstring)."""
  measures = _functional_group(ds, frame, 'PixelMeasuresSequence')
  spacing = (measures or ds).get('PixelSpacing')
  if spacing is None and measures is not None:
    spacing = ds.get('PixelSpacing')
  try:
    rows_mm, cols_mm = (float(value) for value in spacing)
  except (TypeError, ValueError):
    return None
  if not (math.isfinite(rows_mm) and math.isfinite(cols_mm) and rows_mm > 0 and cols_mm > 0):
    return None
  return rows_mm, cols_mm


def _functional_group(ds: Dataset, frame: int, sequence: str) -> Optional[Dataset]:
  """First item of `sequence` for `frame`: per-frame groups first, then shared."""
  for groups, item_index in (('PerFrameFunctionalGroupsSequence', frame),
                             ('SharedFunctionalGroupsSequence', 0)):
    items = ds.get(groups)
    if items is not None and len(items) > item_index:
      found = items[item_index].get(sequence)
      if found:
        return found[0]
  return None


def _rescale(path: str, ds: Dataset, frame: int) -> tuple[float, float]:
  """(RescaleSlope, RescaleIntercept) of one frame (module docstring)."""
  source = _functional_group(ds, frame, 'PixelValueTransformationSequence')
  if source is None or 'RescaleSlope' not in source:
    source = ds
  slope = float(source.get('RescaleSlope', 1.0))
  intercept = float(source.get('RescaleIntercept', 0.0))
  if not (math.isfinite(slope) and math.isfinite(intercept) and slope != 0.0):
    raise slices_lib.InputFileError(
        path, f'frame {frame}: RescaleSlope {slope}, RescaleIntercept {intercept}; '
        'expected a finite non-zero slope and a finite intercept.')
  return slope, intercept


def _position_along_normal(ds: Dataset, frame: int = 0) -> Optional[float]:
  """ImagePositionPatient projected on the slice normal, mm (None if absent)."""
  position = _functional_group(ds, frame, 'PlanePositionSequence')
  position = (position or ds).get('ImagePositionPatient')
  orientation = _functional_group(ds, frame, 'PlaneOrientationSequence')
  orientation = (orientation or ds).get('ImageOrientationPatient')
  if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
    return None
  row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
  return float(np.dot(np.cross(row, column), np.asarray(position, float)))


def _optional_int(value: Any) -> Optional[int]:
  return None if value in (None, '') else int(value)


def series_order(headers: Sequence[tuple[str, Dataset]]) -> list[list[str]]:
  """Groups DICOM files into series and orders each (module docstring).

  Args:
    headers: (path, dataset read by `read_header`) pairs, in listing order.

  Returns:
    Lists of paths, one per SeriesInstanceUID in order of first appearance
    (files without one form their own series each), each sorted along the
    slice normal, or by InstanceNumber, or by path.
  """
  series: dict[str, list[tuple[str, Dataset]]] = {}
  for path, ds in headers:
    key = str(ds.get('SeriesInstanceUID', '')) or f'file:{os.path.abspath(path)}'
    series.setdefault(key, []).append((path, ds))
  ordered = []
  for members in series.values():
    positions = [_position_along_normal(ds) for _, ds in members]
    numbers = [_optional_int(ds.get('InstanceNumber')) for _, ds in members]
    if all(p is not None for p in positions):
      keys = positions
    elif all(n is not None for n in numbers):
      keys = numbers
    else:
      keys = [0] * len(members)
    ordered.append([path for _, path in sorted(
        zip(keys, (path for path, _ in members)))])
  return ordered
