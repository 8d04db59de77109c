"""TIFF files (tifffile): one slice, or a multi-page / multi-dimensional stack.

LDCTIQAC2023 ships float32 slices already windowed to [0, 1]; such files are
used as they are. Other pixel types follow `slices.intensity_of_array`
(floats outside [0, 1] and signed integers are HU; unsigned integers are
display greyscale, divided by the dtype maximum, with a warning).

Layout: the first image series of the file is read; every axis before the
final (Y, X) is flattened into the slice index, in file order. Samples per
pixel (RGB, grey + alpha) are accepted only when they hold one grey image;
note that tifffile writes a (3, H, W) or (4, H, W) array as planar RGB unless
told `photometric='minisblack'`, so such a stack is refused as colour.
"""
import tifffile

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.tif', '.tiff')


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads the slices of one TIFF file.

  Args:
    path: TIFF file.
    intensity: 'auto', 'hu' or 'unit' (`slices.intensity_of_array`).

  Returns:
    One `Slice` per (Y, X) plane of the first series, index = plane position.

  Raises:
    InputFileError: naming `path` when the file is not a readable TIFF, holds
      a colour image, or has the wrong shape, dtype or NaN/inf values.
  """
  try:
    with tifffile.TiffFile(path) as tif:
      if not tif.series:
        raise slices_lib.InputFileError(path, 'cannot read as a TIFF image: no image in the file.')
      series = tif.series[0]
      axes = series.axes
      array = series.asarray()
  except slices_lib.InputFileError:
    raise
  except Exception as e:  # tifffile raises many types for corrupt files.
    raise slices_lib.InputFileError(path, f'cannot read as a TIFF image: {e}') from e
  if 'S' in axes:
    array = slices_lib.grey_from_samples(path, array, axes.index('S'))
    axes = axes.replace('S', '')
  if not axes.endswith('YX'):
    raise slices_lib.InputFileError(
        path, f'TIFF axes {series.axes!r}, expected planes of (Y, X) pixels.')
  stack = slices_lib.as_stack(path, array.reshape((-1,) + array.shape[-2:]))
  stack, kind = slices_lib.intensity_of_array(path, stack, intensity)
  return slices_lib.slices_of_stack(path, stack, kind)
