"""From command-line paths to an ordered list of files, and from a file to slices.

A path is a file or a folder. Folders are walked recursively (files sorted by
path, hidden entries skipped, symbolic links to folders not followed); a file in
a folder is read when its extension names a supported format or when it starts
like a DICOM file (DICOM files often have no extension), and is skipped
otherwise. Only regular files are opened: FIFOs, sockets, devices and broken
links met while walking are skipped without being opened (opening a FIFO
waits forever for a writer), and one named on the command line is refused.
A file named on the command line must be one of the supported formats. DICOM
files found under one path argument are grouped into series and ordered along
the slice normal (`dicom.series_order`); each series takes the place of its
first file in the listing.

`capture_messages()` collects what the readers' libraries (pydicom,
tifffile, Pillow) warn or log while a file is read, so that a caller can
report them with the file instead of letting them through to the terminal.
"""
import contextlib
import dataclasses
import logging
import os
import stat
import warnings
from typing import Iterator, Optional, Sequence

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
# Loggers of the libraries the readers call.
_LIBRARY_LOGGERS = ('pydicom', 'tifffile', 'PIL')


@dataclasses.dataclass
class InputFiles:
  """What the paths hold.

  Attributes:
    files: (path, format) pairs in scoring order; format is one of DICOM,
      TIFF, PNG, NPY.
    failures: paths that cannot be scored (missing, unknown format, unreadable
      DICOM header), one `InputFileError` each.
    skipped: files inside folders that are of no supported format or not
      regular files.
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


def _kind_of_entry(path: str) -> Optional[str]:
  """None for a regular file (links followed), else what it is instead."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return 'a broken link' if os.path.islink(path) else 'unreadable'
  if stat.S_ISREG(mode):
    return None
  for test, name in ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'),
                     (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                     (stat.S_ISDIR, 'a folder')):
    if test(mode):
      return name
  return 'not a regular file'


def _walk(folder: str) -> tuple[list[str], list[str]]:
  """(regular files, other entries) under `folder`, not hidden, each sorted by path."""
  found, others = [], []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for name in files:
      if not name.startswith('.'):
        path = os.path.join(root, name)
        (others if _kind_of_entry(path) else found).append(path)
  return sorted(found), sorted(others)


def find_inputs(paths: Sequence[str]) -> InputFiles:
  """Lists the files to score under `paths` (module docstring for the rules).

  A file reached twice (named twice, or inside two named folders) is listed once.
  """
  result = InputFiles()
  seen = set()
  for path in paths:
    if os.path.isdir(path):
      candidates, others = _walk(path)
      result.skipped.extend(others)
    elif os.path.lexists(path) and _kind_of_entry(path) is not None:
      result.failures.append(slices_lib.InputFileError(
          path, f'{_kind_of_entry(path)}, not a regular file; only regular files are read.'))
      continue
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
  # What pydicom warns about a header (also when it converts a value lazily,
  # while ordering) is reported when the file is read.
  with capture_messages():
    for path, kind in listed:
      if kind == DICOM:
        try:
          headers.append((path, dicom.read_header(path)))
        except slices_lib.InputFileError as e:
          failures.append(e)
    series = dicom.series_order(headers)
  position = {path: i for i, (path, _) in enumerate(listed)}
  anchor = {min(members, key=position.__getitem__): members for members in series}
  ordered = []
  for path, kind in listed:
    if kind != DICOM:
      ordered.append((path, kind))
    elif path in anchor:
      ordered.extend((member, DICOM) for member in anchor[path])
  return ordered


class _Collector(logging.Handler):

  def __init__(self, messages: list[str]):
    super().__init__(logging.WARNING)
    self._messages = messages

  def emit(self, record: logging.LogRecord) -> None:
    self._messages.append(f'{record.name}: {record.getMessage()}')


@contextlib.contextmanager
def capture_messages() -> Iterator[list[str]]:
  """Collects the warnings and library log records (WARNING and up) of the block.

  Yields a list that fills with one line per message: a warning's text
  (prefixed by its category unless it is an `AssumedIntensityWarning`) or
  '<logger>: <message>' for a record of pydicom, tifffile or Pillow (whose
  tracebacks do not reach the terminal).
  """
  messages: list[str] = []
  handler = _Collector(messages)
  loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
  propagate = [logger.propagate for logger in loggers]
  for logger in loggers:
    logger.addHandler(handler)
    logger.propagate = False
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      yield messages
  finally:
    for logger, old in zip(loggers, propagate):
      logger.removeHandler(handler)
      logger.propagate = old
  warned = [str(w.message) if issubclass(w.category, slices_lib.AssumedIntensityWarning)
            else f'{w.category.__name__}: {w.message}' for w in caught]
  messages[:0] = warned


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
