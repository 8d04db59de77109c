"""PNG files (Pillow): one 8-bit or 16-bit greyscale slice.

A PNG carries no Hounsfield units: it is a display image, so with
`intensity='auto'` its values are taken as already windowed to [0, 1] by
dividing by the maximum of its pixel type (255 for 8-bit, 65535 for 16-bit),
and an `AssumedIntensityWarning` says so. The score is then only meaningful
when the PNG was exported with the model's soft-tissue window (width 350 HU,
level 40 HU); pass `intensity='hu'` when its values are HU. RGB, grey + alpha
and palette PNGs are accepted when they hold a grey image (equal colour
samples); bilevel images are refused.

Before Pillow decodes anything, the header's size is checked (at most
`slices.MAX_PIXELS_PER_FILE` pixels) and the compressed pixel data is
inflated once, counting bytes without keeping them, to check that it holds
exactly the rows the header declares: a decompression bomb is refused by the
size limit, and a file whose data ends early (which Pillow would decode
silently as a mostly empty image) is refused as truncated.
"""
import math
import struct
import zlib

import numpy as np
from PIL import Image

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.png',)
_UINT16_MAX = np.iinfo(np.uint16).max
_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # By PNG colour type.
# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
          (1, 0, 2, 1))
_INFLATE_PIECE = 1 << 20
# The largest PNG within the size limit: 16-bit RGBA rows (8 bytes a pixel),
# stored, plus chunk overheads.
_MAX_FILE_BYTES = 8 * slices_lib.MAX_PIXELS_PER_FILE + (1 << 24)


def _raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
  """Bytes of filtered rows the header implies (a filter byte starts each row)."""
  passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
  total = 0
  for first_row, first_col, row_step, col_step in passes:
    rows = max(0, math.ceil((height - first_row) / row_step))
    cols = max(0, math.ceil((width - first_col) / col_step))
    if rows and cols:
      total += rows * (1 + math.ceil(cols * bits_per_pixel / 8))
  return total


def _check_stream(path: str) -> None:
  """Checks the header's size, then that the pixel data inflates to exactly that."""
  slices_lib.check_file_size(path, _MAX_FILE_BYTES, 'a PNG')
  with open(path, 'rb') as f:
    data = f.read()
  if not data.startswith(_SIGNATURE):
    return  # Not a PNG: Pillow names the format.
  position, header, inflater, produced, expected = len(_SIGNATURE), None, None, 0, 0
  while position + 8 <= len(data):
    length, kind = struct.unpack('>I4s', data[position:position + 8])
    chunk = data[position + 8:position + 8 + length]
    position += 12 + length
    if kind == b'IHDR' and len(chunk) == 13:
      width, height, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB', chunk)
      slices_lib.check_declared_size(path, (height, width), 'the PNG header')
      header = True
      expected = _raw_size(width, height, depth * _CHANNELS.get(colour, 1), interlace == 1)
      inflater = zlib.decompressobj()
    elif kind == b'IDAT' and inflater is not None:
      try:
        while chunk and produced <= expected:
          produced += len(inflater.decompress(chunk, _INFLATE_PIECE))
          chunk = inflater.unconsumed_tail
      except zlib.error as e:
        raise slices_lib.InputFileError(path, f'cannot read as a PNG image: corrupt '
                                        f'pixel data ({e}).') from e
    elif kind == b'IEND':
      break
  if header and produced < expected:
    raise slices_lib.InputFileError(
        path, f'cannot read as a PNG image: its pixel data holds {produced:,} of the '
        f'{expected:,} bytes its header declares ({width} x {height} pixels): the file is '
        'truncated.')


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads one PNG as a single `Slice` (index 0).

  Raises:
    InputFileError: naming `path` when the file is not a readable PNG, is
      truncated or larger than the size limit, is bilevel or colour, or is
      smaller than MIN_SIDE.
  """
  _check_stream(path)
  try:
    with Image.open(path) as image:
      if image.format != 'PNG':
        raise slices_lib.InputFileError(path, f'a {image.format} image, expected a PNG.')
      mode = image.mode
      if mode == 'P':
        image = image.convert('RGBA')
      array = np.asarray(image)
  except slices_lib.InputFileError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    # Pillow's errors for bad files.
    raise slices_lib.InputFileError(path, f'cannot read as a PNG image: {e}') from e
  if mode == '1':
    raise slices_lib.InputFileError(path, 'bilevel (1-bit) image; expected greyscale.')
  if array.ndim == 3:
    array = slices_lib.grey_from_samples(path, array, -1)
  if mode == 'I':  # How some Pillow versions open 16-bit greyscale PNGs.
    if array.min() < 0 or array.max() > _UINT16_MAX:
      raise slices_lib.InputFileError(
          path, f'32-bit integer values in [{array.min()}, {array.max()}], expected a '
          '16-bit greyscale PNG.')
    array = array.astype(np.uint16)
  stack = slices_lib.as_stack(path, array)
  stack, kind = slices_lib.intensity_of_array(path, stack, intensity)
  return slices_lib.slices_of_stack(path, stack, kind)
