"""NumPy .npy files: one slice (H, W) / (H, W, 1) or a stack (N, H, W).

Read with `allow_pickle=False` (a .npy of objects can run code when loaded).
Intensities follow `slices.intensity_of_array`: floats in [0, 1] are taken as
windowed, other floats and signed integers as HU, unsigned integers as display
greyscale (with a warning).
"""
import numpy as np

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.npy',)
# First bytes of every .npy file (NEP 1).
_MAGIC = b'\x93NUMPY'


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads the slices of one .npy file.

  Args:
    path: .npy file.
    intensity: 'auto', 'hu' or 'unit' (`slices.intensity_of_array`).

  Returns:
    One `Slice` per slice of the array, index = position in the stack.

  Raises:
    InputFileError: naming `path` when the file is not a readable .npy array
      (or holds Python objects), or has the wrong shape, dtype or NaN/inf.
  """
  try:
    with open(path, 'rb') as f:
      is_npy = f.read(len(_MAGIC)) == _MAGIC
    array = np.load(path, allow_pickle=False) if is_npy else None
  except (OSError, ValueError, EOFError) as e:
    raise slices_lib.InputFileError(path, f'cannot read as a .npy array: {e}') from e
  if array is None:
    raise slices_lib.InputFileError(path, 'not a .npy file (no NumPy header).')
  stack = slices_lib.as_stack(path, array)
  stack, kind = slices_lib.intensity_of_array(path, stack, intensity)
  return slices_lib.slices_of_stack(path, stack, kind)
