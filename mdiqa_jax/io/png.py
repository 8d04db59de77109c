"""PNG files (Pillow): one 8-bit or 16-bit greyscale slice.

A PNG carries no Hounsfield units: it is a display image, so with
`intensity='auto'` its values are taken as already windowed to [0, 1] by
dividing by the maximum of its pixel type (255 for 8-bit, 65535 for 16-bit),
and an `AssumedIntensityWarning` says so. The score is then only meaningful
when the PNG was exported with the model's soft-tissue window (width 350 HU,
level 40 HU); pass `intensity='hu'` when its values are HU. RGB, grey + alpha
and palette PNGs are accepted when they hold a grey image (equal colour
samples); bilevel images are refused.
"""
import numpy as np
from PIL import Image

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.png',)
_UINT16_MAX = np.iinfo(np.uint16).max


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads one PNG as a single `Slice` (index 0).

  Raises:
    InputFileError: naming `path` when the file is not a readable PNG, is
      bilevel or colour, or is smaller than MIN_SIDE.
  """
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
  except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for bad files.
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
