"""One line instead of a traceback, for every failure a user can cause and fix.

  run(main, command='mdiqa-train')   absl's app.run(main), but a user error
                                      prints `<command>: error: <message>` (one
                                      line) on stderr and exits with status 1

User errors are the `UserError` subclasses the package raises where a bad
value enters (a config field, an input file, a checkpoint, a workdir held by
another training) and the operating system's errors about files and disks
(`OSError`: missing paths, permissions, a full disk, also when a library
wrapped them). Anything else is a bug and keeps its traceback. Set
MDIQA_TRACEBACK=1 to keep the traceback of user errors too.
"""
import errno
import functools
import os
import sys
from typing import Callable, Optional, Sequence

from absl import app

TRACEBACK_ENV = 'MDIQA_TRACEBACK'
EXIT_ERROR = 1
# Longest message printed: library errors can embed whole specs (TensorStore).
_MAX_MESSAGE_CHARS = 1000
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ('No space left on device', 'Disk quota exceeded')


class UserError(Exception):
  """Base of the errors a user causes and can fix; the message says how."""


def one_line(text: str) -> str:
  """`text` with its whitespace runs collapsed to single spaces, shortened."""
  text = ' '.join(str(text).split())
  if len(text) > _MAX_MESSAGE_CHARS:
    text = text[:_MAX_MESSAGE_CHARS - 4] + ' ...'
  return text


def listing(names: Sequence[str], limit: int = 20) -> str:
  """'a, b, c' for a message: the first `limit` names, then '... and N more'."""
  names = list(names)
  shown = ', '.join(names[:limit])
  if len(names) > limit:
    shown += f', ... and {len(names) - limit} more'
  return shown


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> bool:
  """True when `error` or an error it was raised from says the disk is full."""
  return any((isinstance(e, OSError) and e.errno in _DISK_FULL) or
             any(text in str(e) for text in _DISK_FULL_TEXT) for e in _chain(error))


def _user_error_types() -> tuple:
  from mdiqa_jax.data import ldctiqac2023  # pylint: disable=g-import-not-at-top
  return (UserError, OSError, ldctiqac2023.DataFileError)


def message_of(error: BaseException) -> Optional[str]:
  """The one-line message for a user error, or None for anything else (a bug)."""
  if disk_full(error):
    return 'disk full: ' + one_line(f'{error}')
  if isinstance(error, _user_error_types()):
    return one_line(str(error) or type(error).__name__)
  return None


def guard(main: Callable[[Sequence[str]], Optional[int]], command: str
          ) -> Callable[[Sequence[str]], Optional[int]]:
  """Wraps an absl main so that user errors end as one line and EXIT_ERROR."""
  @functools.wraps(main)
  def guarded(argv: Sequence[str]) -> Optional[int]:
    try:
      return main(argv)
    except Exception as error:  # pylint: disable=broad-except
      message = message_of(error)
      if message is None or os.environ.get(TRACEBACK_ENV):
        raise
      print(f'{command}: error: {message}', file=sys.stderr, flush=True)
      return EXIT_ERROR
  return guarded


def run(main: Callable[[Sequence[str]], Optional[int]], command: str) -> None:
  """absl `app.run(main)` with user errors as one line (module docstring)."""
  app.run(guard(main, command))
