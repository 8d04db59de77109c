"""From command-line paths to an ordered list of files, and from a file to slices.

A path is a file or a folder. Folders are walked recursively (files sorted by
path, hidden entries skipped); a file in a folder is read when its extension names a
supported format or when it starts like a DICOM file (DICOM files often have
no extension), and is skipped otherwise. A file named on the command line
must be one of those formats. DICOM files found under one path argument are
grouped into series and ordered along the slice normal (`dicom.series_order`);
each series takes the place of its first file in the listing.
"""
import dataclasses
import os
from typing import Optional, Sequence

from mdiqa_jax.io import dicom
from mdiqa_jax.io import npy
from mdiqa_jax.io import png
from mdiqa_jax.io import slices as slices_lib
from mdiqa_jax.io import tiff

DICOM, TIFF, PNG, NPY = 'dicom', 'tiff', 'png', 'npy'
_EXTENSIONS = {
    **{ext: DICOM for ext in dicom.EXTENSIONS},
    **{ext: TIFF for ext in tiff.EXTENSIONS},
    **{ext: PNG for ext in png.EXTENSIONS},
    **{ext: NPY for ext in npy.EXTENSIONS},
}
_READERS = {TIFF: tiff.read, PNG: png.read, NPY: npy.read}


@dataclasses.dataclass
class InputFiles:
  """What the paths hold.

  Attributes:
    files: (path, format) pairs in scoring order; format is one of DICOM,
      TIFF, PNG, NPY.
    failures: paths that cannot be scored (missing, unknown format, unreadable
      DICOM header), one `InputFileError` each.
    skipped: files inside folders that are of no supported format.
  """
  files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  failures: list[slices_lib.InputFileError] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)


def file_format(path: str) -> Optional[str]:
  """DICOM / TIFF / PNG / NPY from the extension or the DICOM magic, else None."""
  found = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
  if found is None and dicom.has_dicom_magic(path):
    found = DICOM
  return found


def _walk(folder: str) -> list[str]:
  """Every non-hidden file under `folder`, sorted by path."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    found.extend(os.path.join(root, f) for f in files if not f.startswith('.'))
  return sorted(found)


def find_inputs(paths: Sequence[str]) -> InputFiles:
  """Lists the files to score under `paths` (module docstring for the rules).

  A file reached twice (named twice, or inside two named folders) is listed once.
  """
  result = InputFiles()
  seen = set()
  for path in paths:
    if os.path.isdir(path):
      candidates = _walk(path)
    elif os.path.isfile(path):
      candidates = [path]
    else:
      result.failures.append(slices_lib.InputFileError(path, 'no such file or directory.'))
      continue
    listed = []
    for candidate in candidates:
      key = os.path.realpath(candidate)
      if key in seen:
        continue
      seen.add(key)
      kind = file_format(candidate)
      if kind is not None:
        listed.append((candidate, kind))
      elif candidate == path:
        result.failures.append(slices_lib.InputFileError(
            path, 'unknown file format; expected DICOM (.dcm or a DICOM header), TIFF '
            '(.tif, .tiff), PNG (.png) or NumPy (.npy).'))
      else:
        result.skipped.append(candidate)
    result.files.extend(_order_series(listed, result.failures))
  return result


def _order_series(listed: list[tuple[str, str]],
                  failures: list[slices_lib.InputFileError]) -> list[tuple[str, str]]:
  """Puts each DICOM series, ordered, at the place of its first file."""
  headers = []
  for path, kind in listed:
    if kind == DICOM:
      try:
        headers.append((path, dicom.read_header(path)))
      except slices_lib.InputFileError as e:
        failures.append(e)
  position = {path: i for i, (path, _) in enumerate(listed)}
  anchor = {min(series, key=position.__getitem__): series
            for series in dicom.series_order(headers)}
  ordered = []
  for path, kind in listed:
    if kind != DICOM:
      ordered.append((path, kind))
    elif path in anchor:
      ordered.extend((member, DICOM) for member in anchor[path])
  return ordered


def read_file(path: str, kind: str, intensity: str = 'auto') -> list[slices_lib.Slice]:
  """Reads one file of format `kind` (from `find_inputs`) into slices.

  Args:
    path: the file.
    kind: DICOM, TIFF, PNG or NPY.
    intensity: 'auto', 'hu' or 'unit': how to read values of formats without
      HU information (`slices.intensity_of_array`); DICOM is always rescaled
      to HU.

  Raises:
    InputFileError: naming `path` for any file that cannot be scored.
  """
  slices_lib.check_intensity_mode(intensity)
  if kind == DICOM:
    return dicom.read(path)
  if kind not in _READERS:
    raise ValueError(f'Unknown input format {kind!r}; expected one of '
                     f'{(DICOM,) + tuple(_READERS)}.')
  return _READERS[kind](path, intensity)
