"""Atomic file writes: a crash or a kill leaves the old file or the new one, never half.

  write_text_atomically(path, text)     text file
  write_json_atomically(path, value)    JSON, indented, sorted keys
  read_json(path)                       the value of a JSON file
  atomic_path(path) as temporary        any writer (np.savez, ...)
  save_figure_atomically(figure, path)  matplotlib figure
  staged_directory(path) as staging     a whole directory (exports, pseudo-labels)

Each writes a temporary file beside `path` (same file system, so the rename is
atomic on POSIX) and `os.replace`s it onto `path`; a failed write removes the
temporary file and leaves `path` untouched.
"""
import contextlib
import json
import os
import shutil
import uuid
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write; renames it onto `path` when the block ends.

  The temporary name keeps `path`'s extension, for writers that choose the
  format from it (np.savez appends '.npz' otherwise; matplotlib picks PNG).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  name = os.path.basename(path)
  # A fresh name the writer creates itself, so the file gets the usual
  # permissions (umask), not mkstemp's owner-only 0600.
  temporary = os.path.join(directory, f'.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}'
                                      f'{os.path.splitext(name)[1] or ".tmp"}')
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` (UTF-8, newlines as given) to `path` atomically."""
  with atomic_path(path) as temporary:
    with open(temporary, 'w', encoding='utf-8', newline='') as f:
      f.write(text)


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with sorted keys to `path` atomically."""
  write_text_atomically(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def read_json(path: str) -> Any:
  """The value of the JSON file at `path` (UTF-8)."""
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def save_figure_atomically(figure: Any, path: str, **savefig_kwargs: Any) -> None:
  """`figure.savefig(path, **savefig_kwargs)` (matplotlib), atomically."""
  with atomic_path(path) as temporary:
    figure.savefig(temporary, **savefig_kwargs)


@contextlib.contextmanager
def staged_directory(path: str, *, replace: bool = False) -> Iterator[str]:
  """Yields `<path>.partial`, empty; renames it onto `path` when the block ends.

  A `.partial` left by a killed process is removed first; a failed block
  removes it again, so `path` exists complete or not at all.
  Args:
    path: the directory to create.
    replace: remove an existing `path` once the new one is complete; without
      it an existing `path` raises FileExistsError before anything is written.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not replace:
    raise FileExistsError(f'{path} exists; it is never overwritten.')
  partial = path + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    yield partial
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(partial, path)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
