"""NumPy .npy files: one slice (H, W) / (H, W, 1) or a stack (N, H, W).

Read with `allow_pickle=False` (a .npy of objects can run code when loaded).
The header is read first: its shape and dtype must fit the size limits of
`slices.check_declared_size`, and the file must hold as many bytes as the
header declares, before the array is loaded. Intensities follow
`slices.intensity_of_array`: floats in [0, 1] are taken as windowed, other
floats and signed integers as HU, unsigned integers as display greyscale
(with a warning).
"""
import os

import numpy as np

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.npy',)
# First bytes of every .npy file (NEP 1).
_MAGIC = b'\x93NUMPY'
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _read_header(path: str) -> tuple[tuple, np.dtype, int]:
  """(shape, dtype, offset of the data) from the .npy header, checked."""
  with open(path, 'rb') as f:
    if f.read(len(_MAGIC)) != _MAGIC:
      raise slices_lib.InputFileError(path, 'not a .npy file (no NumPy header).')
    f.seek(0)
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
      raise slices_lib.InputFileError(
          path, f'.npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0 '
          '(version 3.0 is written only for structured dtypes, which are not images).')
    shape, _, dtype = _HEADER_READERS[version](f)
    return shape, dtype, f.tell()


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads the slices of one .npy file.

  Args:
    path: .npy file.
    intensity: 'auto', 'hu' or 'unit' (`slices.intensity_of_array`).

  Returns:
    One `Slice` per slice of the array, index = position in the stack.

  Raises:
    InputFileError: naming `path` when the file is not a readable .npy array
      (or holds Python objects), declares more than the size limit or more
      bytes than it holds, or has the wrong shape, dtype or NaN/inf.
  """
  try:
    shape, dtype, offset = _read_header(path)
  except slices_lib.InputFileError:
    raise
  except (OSError, ValueError, EOFError, SyntaxError) as e:
    raise slices_lib.InputFileError(path, f'cannot read as a .npy array: {e}') from e
  if dtype.hasobject:
    raise slices_lib.InputFileError(
        path, f'cannot read as a .npy array: it holds Python objects (dtype {dtype}), '
        'which are not loaded (allow_pickle=False).')
  dims = slices_lib.check_declared_size(path, shape, 'the .npy header')
  needed = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  slices_lib.check_declared_bytes(path, needed, os.path.getsize(path) - offset,
                                  'the .npy header')
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise slices_lib.InputFileError(path, f'cannot read as a .npy array: {e}') from e
  stack = slices_lib.as_stack(path, array)
  stack, kind = slices_lib.intensity_of_array(path, stack, intensity)
  return slices_lib.slices_of_stack(path, stack, kind)
