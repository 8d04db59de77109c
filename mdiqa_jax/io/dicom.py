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

Every attribute is read defensively: a malformed value (InstanceNumber 'abc',
an ImagePositionPatient that is not three numbers) is treated as absent
where the file can do without it (ordering, z_mm) and refused, naming the
attribute, where it cannot (Rows, NumberOfFrames, SamplesPerPixel,
BitsAllocated, RescaleSlope); an empty RescaleSlope / RescaleIntercept is
taken as absent, with a warning. Before the pixels are read, the header's
size (NumberOfFrames x Rows x Columns) must fit `slices.MAX_PIXELS_PER_FILE`;
uncompressed pixel data must hold the bytes the header declares (not fewer:
a truncated file or too many frames; not twice as many or more: a wrong
BitsAllocated); compressed pixel data needs an installed decoder, and one that
is missing is named (pydicom decodes RLE itself, JPEG baseline and JPEG 2000
with Pillow; JPEG lossless and JPEG-LS need pylibjpeg-libjpeg, pyjpegls or
python-gdcm). Only MONOCHROME1 / MONOCHROME2 images are read (PALETTE COLOR,
RGB and YBR are refused). A slice whose rescaled values are mostly above
MAX_PLAUSIBLE_HU cannot be CT (negative values stored as unsigned:
PixelRepresentation 0 on signed data) and is refused.
"""
import math
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom import pixels as pydicom_pixels

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.dcm', '.dicom', '.ima')
# Byte offset of the 'DICM' magic after the 128-byte preamble (PS3.10 7.1).
_MAGIC_OFFSET = 128
_PIXEL_KEYWORDS = ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData')
_GREYSCALE = ('MONOCHROME1', 'MONOCHROME2')
_BITS_ALLOCATED = (8, 16, 32, 64)
# CT numbers stop near +3071 HU (+30000 on extended scales, for metal); a
# slice with more than _IMPLAUSIBLE_FRACTION of its pixels above this is not CT.
MAX_PLAUSIBLE_HU = 30000.0
# Room for the attributes besides the pixels (overlays, private tags), bytes.
_MAX_OTHER_BYTES = 64 << 20
_IMPLAUSIBLE_FRACTION = 0.01


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


def _value(path: str, ds: Dataset, keyword: str) -> Any:
  """ds.get(keyword), with pydicom's errors on malformed values named."""
  try:
    return ds.get(keyword)
  except Exception as e:  # pydicom converts values lazily and raises many types.
    raise slices_lib.InputFileError(path, f'{keyword} is malformed: {e}') from e


def _integer(path: str, ds: Dataset, keyword: str, default: Optional[int] = None) -> int:
  """An integer attribute; absent -> default (or an error when there is none)."""
  value = _value(path, ds, keyword)
  if keyword not in ds and default is not None:
    return default
  try:
    return int(value)
  except (TypeError, ValueError):
    raise slices_lib.InputFileError(
        path, f'{keyword} is {value!r}, expected an integer.') from None


def _sop_name(path: str, ds: Dataset) -> str:
  sop_class = _value(path, ds, 'SOPClassUID')
  return getattr(sop_class, 'name', sop_class) or 'unknown SOP class'


def _check_image_header(path: str, ds: Dataset) -> tuple[int, int, int]:
  """(frames, rows, columns) of an image header, every layout attribute checked."""
  if 'Rows' not in ds or 'Columns' not in ds:
    raise slices_lib.InputFileError(
        path, f'DICOM file without pixel data ({_sop_name(path, ds)}).')
  rows, columns = _integer(path, ds, 'Rows'), _integer(path, ds, 'Columns')
  frames = _integer(path, ds, 'NumberOfFrames', default=1)
  if frames < 1:
    raise slices_lib.InputFileError(path, f'NumberOfFrames is {frames}, expected >= 1.')
  samples = _integer(path, ds, 'SamplesPerPixel', default=1)
  photometric = str(_value(path, ds, 'PhotometricInterpretation') or 'MONOCHROME2')
  if samples != 1:
    raise slices_lib.InputFileError(
        path, f'{samples} samples per pixel ({photometric}); expected a greyscale CT image.')
  if photometric.strip() not in _GREYSCALE:
    raise slices_lib.InputFileError(
        path, f'PhotometricInterpretation {photometric!r}; expected MONOCHROME1 or '
        'MONOCHROME2 (a greyscale CT image).')
  bits = _integer(path, ds, 'BitsAllocated')
  if bits not in _BITS_ALLOCATED:
    raise slices_lib.InputFileError(
        path, f'BitsAllocated is {bits}, expected one of {_BITS_ALLOCATED}.')
  slices_lib.check_declared_size(path, (frames, rows, columns),
                                 'the DICOM header (NumberOfFrames x Rows x Columns)')
  if ds.get('ModalityLUTSequence'):
    raise slices_lib.InputFileError(
        path, 'uses a Modality LUT Sequence; only the linear RescaleSlope / '
        'RescaleIntercept mapping to HU is supported.')
  return frames, rows, columns


def _check_pixel_data(path: str, ds: Dataset, frames: int, rows: int, columns: int) -> None:
  """Pixel data present, decodable, and (uncompressed) of the declared size."""
  keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
  if keyword is None:
    raise slices_lib.InputFileError(
        path, f'the header describes a {rows} x {columns} image but the file holds no pixel '
        f'data: it is truncated ({os.path.getsize(path):,} bytes).')
  syntax = getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', None)
  if syntax is not None and syntax.is_compressed:
    try:
      decoder = pydicom_pixels.get_decoder(syntax)
    except NotImplementedError:
      raise slices_lib.InputFileError(
          path, f'{syntax.name} DICOM: pydicom cannot decode this transfer syntax.') from None
    if not decoder.is_available:
      raise slices_lib.InputFileError(
          path, f'{syntax.name} DICOM: no decoder for it is installed; install one of: '
          f'{"; ".join(decoder.missing_dependencies)}.')
    return
  bits = _integer(path, ds, 'BitsAllocated')
  needed = math.ceil(frames * rows * columns * bits / 8)
  held = len(ds[keyword].value or b'')
  source = 'the DICOM header (NumberOfFrames x Rows x Columns x BitsAllocated / 8)'
  slices_lib.check_declared_bytes(path, needed, held, source)
  if held >= 2 * needed:
    raise slices_lib.InputFileError(
        path, f'{source} declares {needed:,} bytes of pixel data but the file holds '
        f'{held:,}: the header is wrong (BitsAllocated {bits}? NumberOfFrames {frames}?).')


def read(path: str) -> list[slices_lib.Slice]:
  """Reads every frame of one DICOM file as a `Slice` in HU.

  Returns:
    One `Slice` per frame (index = frame number, 0 for single-frame files),
    intensity HU, metadata: 'series_uid' (str), 'instance_number' (int or
    None), 'z_mm' (position along the slice normal, or None), 'slope',
    'intercept'.

  Raises:
    InputFileError: naming `path` when it is not a readable DICOM file, holds
      no image (e.g. a structured report or DICOMDIR), is truncated, declares
      more than the size limit or another layout than its pixel data has,
      holds a colour or palette image, uses a Modality LUT Sequence, cannot
      be decompressed (the missing decoder named), has a malformed, zero or
      non-finite rescale, values that cannot be CT, or the wrong shape.
  """
  header = read_header(path)
  frames, rows, columns = _check_image_header(path, header)
  # Read whole only when the file is not far larger than the image it declares.
  slices_lib.check_file_size(
      path, 2 * frames * rows * columns * _integer(path, header, 'BitsAllocated') // 8 +
      _MAX_OTHER_BYTES, f'a DICOM file of {frames} x {rows} x {columns} pixels')
  ds = _dcmread(path, stop_before_pixels=False)
  _check_pixel_data(path, ds, frames, rows, columns)
  modality = _value(path, ds, 'Modality') or ''
  if modality != 'CT':
    warnings.warn(f'{path}: Modality {modality!r}, not CT; rescaled values taken as HU.',
                  slices_lib.AssumedIntensityWarning, stacklevel=2)
  try:
    stored = np.asarray(ds.pixel_array)
    stored = stored.reshape((frames, rows, columns))
  except Exception as e:  # Decoders, truncated pixel data, bad attributes.
    raise slices_lib.InputFileError(path, f'cannot decode the DICOM pixel data: {e}') from e
  stack = slices_lib.as_stack(path, stored)
  hu = np.empty(stack.shape, np.float32)
  metadata, spacings = [], []
  for frame in range(frames):
    spacings.append(_pixel_spacing(ds, frame))
    slope, intercept = _rescale(path, ds, frame)
    hu[frame] = stack[frame].astype(np.float64) * slope + intercept
    metadata.append({
        'series_uid': str(ds.get('SeriesInstanceUID', '')),
        'instance_number': _optional_int(_value(path, ds, 'InstanceNumber')),
        'z_mm': _position_along_normal(ds, frame),
        'slope': slope,
        'intercept': intercept,
    })
  _check_plausible_hu(path, hu, ds)
  return slices_lib.slices_of_stack(path, hu, slices_lib.HU, metadata, spacings)


def _check_plausible_hu(path: str, hu: np.ndarray, ds: Dataset) -> None:
  above = float(np.mean(hu > MAX_PLAUSIBLE_HU))
  if above > _IMPLAUSIBLE_FRACTION:
    raise slices_lib.InputFileError(
        path, f'{100 * above:.0f}% of the pixels lie above {MAX_PLAUSIBLE_HU:g} HU (up to '
        f'{float(hu.max()):g}): these are not CT values. Negative values stored as '
        f'unsigned? (PixelRepresentation is {ds.get("PixelRepresentation")!r}; 0 = '
        'unsigned, 1 = signed.)')


def _pixel_spacing(ds: Dataset, frame: int) -> Optional[tuple[float, float]]:
  """(row, column) spacing of one frame, mm, or None (module docstring)."""
  measures = _functional_group(ds, frame, 'PixelMeasuresSequence')
  spacing = _safe_get(measures or ds, 'PixelSpacing')
  if spacing is None and measures is not None:
    spacing = _safe_get(ds, 'PixelSpacing')
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
  slope = _rescale_value(path, source, 'RescaleSlope', 1.0)
  intercept = _rescale_value(path, source, 'RescaleIntercept', 0.0)
  if not (math.isfinite(slope) and math.isfinite(intercept) and slope != 0.0):
    raise slices_lib.InputFileError(
        path, f'frame {frame}: RescaleSlope {slope}, RescaleIntercept {intercept}; '
        'expected a finite non-zero slope and a finite intercept.')
  return slope, intercept


def _rescale_value(path: str, source: Dataset, keyword: str, default: float) -> float:
  """A rescale attribute: absent or empty -> default (empty with a warning)."""
  value = _value(path, source, keyword)
  if keyword in source and value in (None, ''):
    warnings.warn(f'{path}: {keyword} is empty; taken as {default:g}.',
                  slices_lib.AssumedIntensityWarning, stacklevel=3)
  if value in (None, ''):
    return default
  try:
    return float(value)
  except (TypeError, ValueError):
    raise slices_lib.InputFileError(
        path, f'{keyword} is {value!r}, expected a number.') from None


def _position_along_normal(ds: Dataset, frame: int = 0) -> Optional[float]:
  """ImagePositionPatient projected on the slice normal, mm (None if absent or malformed)."""
  try:
    position = _functional_group(ds, frame, 'PlanePositionSequence')
    position = (position or ds).get('ImagePositionPatient')
    orientation = _functional_group(ds, frame, 'PlaneOrientationSequence')
    orientation = (orientation or ds).get('ImageOrientationPatient')
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
      return None
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    z_mm = float(np.dot(np.cross(row, column), np.asarray(position, float)))
  except (TypeError, ValueError, AttributeError):
    return None
  return z_mm if math.isfinite(z_mm) else None


def _optional_int(value: Any) -> Optional[int]:
  """An integer attribute's value, None when absent or malformed."""
  try:
    return None if value in (None, '') else int(value)
  except (TypeError, ValueError):
    return None


def _safe_get(ds: Dataset, keyword: str) -> Any:
  """ds.get(keyword), None when its value is malformed (ordering does without it)."""
  try:
    return ds.get(keyword)
  except Exception:  # pylint: disable=broad-except  (pydicom's lazy conversions)
    return None


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
    key = str(_safe_get(ds, 'SeriesInstanceUID') or '') or f'file:{os.path.abspath(path)}'
    series.setdefault(key, []).append((path, ds))
  ordered = []
  for members in series.values():
    positions = [_position_along_normal(ds) for _, ds in members]
    numbers = [_optional_int(_safe_get(ds, 'InstanceNumber')) for _, ds in members]
    if all(p is not None for p in positions):
      keys = positions
    elif all(n is not None for n in numbers):
      keys = numbers
    else:
      keys = [0] * len(members)
    ordered.append([path for _, path in sorted(
        zip(keys, (path for path, _ in members)))])
  return ordered
