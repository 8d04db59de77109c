"""TIFF files (tifffile): one slice, or a multi-page / multi-dimensional stack.

LDCTIQAC2023 ships float32 slices already windowed to [0, 1]; such files are
used as they are. Other pixel types follow `slices.intensity_of_array`
(floats outside [0, 1] and signed integers are HU; unsigned integers are
display greyscale, divided by the dtype maximum, with a warning).

Layout: the first image series of the file is read; every axis before the
final (Y, X) is flattened into the slice index, in file order. Samples per
pixel of unsigned integers (RGB, grey + alpha) are accepted only when they
hold one grey image. Float and signed samples are never colour: tifffile
writes a (3, H, W) or (4, H, W) array as planar RGB unless told
`photometric='minisblack'`, so their samples are read as that many slices
(and a warning says so).

Before any pixel is decoded, the series' declared size is checked against
`slices.MAX_PIXELS_PER_FILE`, every strip or tile must lie inside the file,
and a compression whose decoder is not installed is named as such
(tifffile decodes LZW, deflate and PackBits itself; JPEG, JPEG 2000, ZSTD,
LZMA, WebP and others need the `imagecodecs` package).
"""
import os
import warnings

import numpy as np
import tifffile

from mdiqa_jax.io import slices as slices_lib

EXTENSIONS = ('.tif', '.tiff')


def _check_layout(path: str, series) -> None:
  """Declared size and strip / tile offsets, before decoding."""
  slices_lib.check_declared_size(path, series.shape, 'the TIFF header')
  file_size = os.path.getsize(path)
  for page in series.pages:
    if page is None:
      continue
    for offset, count in zip(getattr(page, 'dataoffsets', ()),
                             getattr(page, 'databytecounts', ())):
      if offset + count > file_size:
        raise slices_lib.InputFileError(
            path, f'a TIFF strip or tile at bytes {offset:,}-{offset + count:,} lies beyond '
            f'the end of the file ({file_size:,} bytes): the file is truncated.')


def _decode_error(path: str, series, error: Exception) -> slices_lib.InputFileError:
  compression = getattr(series.pages[0], 'compression', None) if series.pages else None
  name = getattr(compression, 'name', str(compression))
  missing = isinstance(error, ImportError) or 'imagecodecs' in str(error)
  if compression is not None and int(compression) != 1 and missing:
    return slices_lib.InputFileError(
        path, f'{name}-compressed TIFF: no decoder for {name} is installed '
        '(pip install imagecodecs).')
  return slices_lib.InputFileError(path, f'cannot read as a TIFF image: {error}')


def read(path: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads the slices of one TIFF file.

  Args:
    path: TIFF file.
    intensity: 'auto', 'hu' or 'unit' (`slices.intensity_of_array`).

  Returns:
    One `Slice` per (Y, X) plane of the first series, index = plane position.

  Raises:
    InputFileError: naming `path` when the file is not a readable TIFF, is
      truncated, larger than the size limit or compressed without an
      installed decoder, holds a colour image, or has the wrong shape, dtype
      or NaN/inf values.
  """
  try:
    with tifffile.TiffFile(path) as tif:
      if not tif.series:
        raise slices_lib.InputFileError(path, 'cannot read as a TIFF image: no image in the file.')
      series = tif.series[0]
      axes = series.axes
      _check_layout(path, series)
      try:
        array = series.asarray()
      except Exception as e:  # tifffile and its codecs raise many types.
        raise _decode_error(path, series, e) from e
  except slices_lib.InputFileError:
    raise
  except Exception as e:  # tifffile raises many types for corrupt files.
    raise slices_lib.InputFileError(path, f'cannot read as a TIFF image: {e}') from e
  if 'S' in axes:
    if np.asarray(array).dtype.kind in 'fi':
      samples = array.shape[axes.index('S')]
      warnings.warn(f'{path}: {samples} {array.dtype} samples per pixel read as {samples} '
                    'slices (float and signed data are not colour).',
                    slices_lib.AssumedIntensityWarning, stacklevel=2)
      array = np.moveaxis(array, axes.index('S'), -3)
      axes = axes.replace('S', '')
      axes = axes[:-2] + 'Q' + axes[-2:]
    else:
      array = slices_lib.grey_from_samples(path, array, axes.index('S'))
      axes = axes.replace('S', '')
  if not axes.endswith('YX'):
    raise slices_lib.InputFileError(
        path, f'TIFF axes {series.axes!r}, expected planes of (Y, X) pixels.')
  stack = slices_lib.as_stack(path, array.reshape((-1,) + array.shape[-2:]))
  stack, kind = slices_lib.intensity_of_array(path, stack, intensity)
  return slices_lib.slices_of_stack(path, stack, kind)
