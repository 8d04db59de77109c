"""What every reader returns: CT slices in HU or already windowed, and their checks.

A reader turns one file into a list of `Slice`s, each (H, W) float32 either in
Hounsfield units (`HU`) or already windowed to [0, 1] (`UNIT`). `to_unit` then
maps either to the model's input range with THE window of the project
(`intensity.window_to_unit`). Whether a file holds HU or windowed values is
decided from its format and pixel type (`intensity_of_array`):

  DICOM                       stored values x RescaleSlope + RescaleIntercept = HU
  floats, all in [0, 1]       already windowed (how LDCTIQAC2023 ships its TIFFs)
  floats outside [0, 1]       HU
  signed integers             HU
  unsigned integers (PNG,     display greyscale without HU information, taken as
    8/16-bit TIFF or .npy)    windowed: value / max of the dtype (255, 65535),
                              with an `AssumedIntensityWarning`

`--intensity=hu|unit` on the predict command overrides the rule for
non-DICOM files. Bad files raise `InputFileError`, whose message starts with
the file's path.

Sizes a file declares (header dimensions, frame counts) are checked before
anything of that size is allocated (`check_declared_size`): at most
MAX_PIXELS_PER_FILE pixels per file, and never more pixel bytes than the file
holds (`check_declared_bytes`), so a corrupt or hostile header cannot make a
reader allocate gigabytes.
"""
import dataclasses
import math
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from mdiqa_jax.data import intensity as intensity_lib

HU = 'hu'
UNIT = 'unit'
# How a reader decides between HU and windowed values ('auto': the rules above).
INTENSITY_MODES = ('auto', HU, UNIT)
# Smallest slice side scored: smaller images are thumbnails or icons, not scans.
MIN_SIDE = 32
# Float32 windowing can overshoot [0, 1] by rounding; such values are clipped.
UNIT_TOLERANCE = 1e-4
# Most pixels read from one file (all its slices): 256 MB as float32, a stack
# of 256 slices of 512 x 512. Reading a file then stays far below 2 GB.
MAX_PIXELS_PER_FILE = 2 ** 26


class InputFileError(ValueError):
  """A file cannot be scored: unreadable, not an image, wrong shape, NaN/inf."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason


class AssumedIntensityWarning(UserWarning):
  """A file carries no HU information; its values were taken as windowed."""


@dataclasses.dataclass(frozen=True)
class Slice:
  """One CT slice read from a file.

  Attributes:
    file: path of the file it came from.
    index: position of the slice within that file (frame, page or stack
      index; 0 for a single-slice file).
    pixels: (H, W) float32, HU when intensity == HU, else in [0, 1].
    intensity: HU or UNIT.
    metadata: format-specific facts worth reporting (DICOM: series_uid,
      instance_number, z_mm), JSON-serialisable scalars.
    pixel_mm: (row, column) pixel spacing in mm when the file states it
      (DICOM PixelSpacing), else None (the scorer assumes one and says so).
  """
  file: str
  index: int
  pixels: np.ndarray
  intensity: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  pixel_mm: Optional[tuple[float, float]] = None


def check_declared_size(path: str, shape: Sequence[Any], source: str) -> tuple[int, ...]:
  """Checks dimensions a header declares, before anything of that size exists.

  Args:
    path: the file (for messages).
    shape: the declared dimensions (any integers; pixels, frames, samples).
    source: what declared them, e.g. 'the .npy header'.
  Returns:
    The shape as Python ints.
  Raises:
    InputFileError: for a negative or non-integer dimension, or more than
      MAX_PIXELS_PER_FILE elements.
  """
  try:
    dims = tuple(int(n) for n in shape)
  except (TypeError, ValueError, OverflowError):
    raise InputFileError(path, f'{source} declares dimensions {tuple(shape)!r}, expected '
                         'non-negative integers.') from None
  if any(n < 0 for n in dims):
    raise InputFileError(path, f'{source} declares dimensions {dims}, expected '
                         'non-negative integers.')
  total = math.prod(dims)
  if total > MAX_PIXELS_PER_FILE:
    raise InputFileError(
        path, f'{source} declares {" x ".join(map(str, dims))} = {total:,} values, more than '
        f'the {MAX_PIXELS_PER_FILE:,} read from one file; split it into smaller files.')
  return dims


def check_declared_bytes(path: str, needed: int, available: int, source: str) -> None:
  """Refuses a header that declares more pixel bytes than the file holds.

  Raises:
    InputFileError: naming both sizes (a truncated file or a wrong header).
  """
  if needed > available:
    raise InputFileError(
        path, f'{source} declares {needed:,} bytes of pixel data but the file holds '
        f'{available:,}: the file is truncated or its header is wrong.')


def check_file_size(path: str, largest: int, what: str) -> None:
  """Refuses a file larger than `what` (within the size limits) can be, before it
  is read into memory.

  Raises:
    InputFileError: naming the file's size and the largest expected.
  """
  size = os.path.getsize(path)
  if size > largest:
    raise InputFileError(
        path, f'the file is {size:,} bytes, more than {what} can take ({largest:,} bytes); '
        'it is not read.')


def to_unit(image: Slice, window_width: float = intensity_lib.WINDOW_WIDTH_HU,
            window_level: float = intensity_lib.WINDOW_LEVEL_HU) -> np.ndarray:
  """Returns the slice as the model sees it before resizing: (H, W) float32 in [0, 1].

  HU slices go through `intensity.window_to_unit(width, level)`; windowed
  slices are returned as they are.
  """
  if image.intensity == HU:
    return intensity_lib.window_to_unit(image.pixels, window_width, window_level)
  return image.pixels


def check_intensity_mode(mode: str) -> None:
  if mode not in INTENSITY_MODES:
    raise ValueError(f'intensity must be one of {INTENSITY_MODES}, got {mode!r}.')


def as_stack(path: str, array: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1) or (N, H, W) -> (N, H, W), checking shape and finiteness.

  Raises:
    InputFileError: naming `path` for any other number of dimensions, a side
      below MIN_SIDE, an empty stack, a non-numeric dtype, or NaN/inf values.
  """
  array = np.asarray(array)
  if array.dtype.kind not in 'iuf':
    raise InputFileError(path, f'pixel type {array.dtype}, expected integers or floats.')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3:
    raise InputFileError(
        path, f'array of shape {array.shape}, expected a slice (H, W) or (H, W, 1) '
        'or a stack of slices (N, H, W).')
  if array.shape[0] == 0:
    raise InputFileError(path, f'empty stack of shape {array.shape}.')
  if min(array.shape[1:]) < MIN_SIDE:
    raise InputFileError(
        path, f'slices of {array.shape[1]} x {array.shape[2]} pixels, expected at least '
        f'{MIN_SIDE} x {MIN_SIDE}.')
  if array.dtype.kind == 'f':
    finite = np.isfinite(array)
    if not finite.all():
      bad = [int(i) for i in np.flatnonzero(~finite.all(axis=(1, 2)))]
      raise InputFileError(
          path, f'{int((~finite).sum())} NaN/inf pixel values (slices {bad[:10]}'
          f'{" ..." if len(bad) > 10 else ""}).')
  return array


def intensity_of_array(path: str, array: np.ndarray, mode: str = 'auto') -> tuple[np.ndarray, str]:
  """Applies the HU / windowed rule of the module docstring to a checked array.

  Args:
    path: file the array came from (for messages).
    array: any shape, integer or float dtype, finite.
    mode: 'auto' (the rules), HU (values are HU) or UNIT (values are windowed:
      floats must lie in [0, 1], unsigned integers are divided by their
      dtype's maximum).

  Returns:
    (float32 array of the same shape, HU or UNIT).

  Raises:
    InputFileError: for mode UNIT with floats outside [0, 1] or signed integers.
  """
  check_intensity_mode(mode)
  kind = array.dtype.kind
  if mode == HU or (mode == 'auto' and kind == 'i'):
    return array.astype(np.float32), HU
  if kind == 'u' and mode in ('auto', UNIT):
    scale = float(np.iinfo(array.dtype).max)
    if mode == 'auto':
      warnings.warn(
          f'{path}: {array.dtype} pixels carry no HU information; taken as already '
          f'windowed to [0, 1] (value / {scale:g}). Pass --intensity=hu if they are HU.',
          AssumedIntensityWarning, stacklevel=2)
    return (array.astype(np.float32) / np.float32(scale)), UNIT
  unit = _float_unit_range(array)
  if unit is not None:
    return unit, UNIT
  if mode == UNIT:
    raise InputFileError(
        path, f'values in [{float(array.min())}, {float(array.max())}] ({array.dtype}) '
        'cannot be windowed intensities; expected floats in [0, 1].')
  return array.astype(np.float32), HU


def _float_unit_range(array: np.ndarray) -> Optional[np.ndarray]:
  """Float array within [0, 1] (up to rounding) as clipped float32, else None."""
  if array.dtype.kind != 'f':
    return None
  low, high = float(array.min()), float(array.max())
  if low < -UNIT_TOLERANCE or high > 1.0 + UNIT_TOLERANCE:
    return None
  return np.clip(array.astype(np.float32), 0.0, 1.0)


def slices_of_stack(path: str, stack: np.ndarray, intensity: str,
                    metadata: Optional[list[dict[str, Any]]] = None,
                    pixel_mm: Optional[list[Optional[tuple[float, float]]]] = None
                    ) -> list[Slice]:
  """Splits an (N, H, W) float32 stack into N `Slice`s of one file."""
  metadata = metadata or [{} for _ in range(stack.shape[0])]
  pixel_mm = pixel_mm or [None] * stack.shape[0]
  return [Slice(file=path, index=i, pixels=np.ascontiguousarray(stack[i]),
                intensity=intensity, metadata=metadata[i], pixel_mm=pixel_mm[i])
          for i in range(stack.shape[0])]


def grey_from_samples(path: str, array: np.ndarray, sample_axis: int) -> np.ndarray:
  """Drops the colour-sample axis of a greyscale image stored with samples.

  Grey images are often saved as RGB or grey + alpha: with 1 or 2 samples
  (grey, alpha) the first is kept; with 3 or 4 (RGB[A]) the colour samples must
  be equal. Alpha is ignored.

  Raises:
    InputFileError: naming `path` for a colour image (RGB samples differ).
  """
  array = np.moveaxis(np.asarray(array), sample_axis, -1)
  samples = array.shape[-1]
  if samples in (3, 4):
    colour = array[..., :3]
    if not (np.array_equal(colour[..., 0], colour[..., 1]) and
            np.array_equal(colour[..., 0], colour[..., 2])):
      raise InputFileError(
          path, f'colour image ({samples} samples per pixel with different colour '
          'values); expected a greyscale CT slice.')
  elif samples not in (1, 2):
    raise InputFileError(path, f'{samples} samples per pixel; expected a greyscale image.')
  return array[..., 0]
