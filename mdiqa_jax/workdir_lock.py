"""One training per workdir: an exclusive `fcntl.flock` on <workdir>/train.lock.

A second training on the same workdir stops at once, naming the process that
holds the lock; the kernel releases it when the holder exits, however it
exits (kill -9 too). Readers (predict, evaluate, export) take no lock.
"""
import contextlib
import datetime
import fcntl
import os
import socket
import sys
from typing import Iterator

import jax

from mdiqa_jax import command_errors

LOCK_FILE = 'train.lock'


class WorkdirLockedError(command_errors.UserError, RuntimeError):
  """Another training holds the workdir's lock."""


def _lock_path(workdir: str) -> str:
  # With several hosts each process locks its own file: process i of a second
  # run meets process i of the first.
  name = LOCK_FILE if jax.process_count() == 1 else f'{LOCK_FILE}.{jax.process_index()}'
  return os.path.join(os.path.abspath(os.fspath(workdir)), name)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str]:
  """Holds the workdir's exclusive lock for the block (one training per workdir).

  Creates the workdir and <workdir>/train.lock, takes an `fcntl.flock` on it
  without waiting, and writes who holds it (pid, host, start time, command).
  The kernel drops the lock when the process ends, even by kill -9.
  Yields:
    The lock file's path.
  Raises:
    WorkdirLockedError: naming the lock file and the process that holds it.
  """
  path = _lock_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path, encoding='utf-8', errors='replace') as f:
        holder = ' '.join(f.read().split()) or 'a process that has not written its name yet'
      raise WorkdirLockedError(
          f'{os.path.dirname(path)}: another training is writing this workdir ({holder}; '
          f'lock {path}). Wait for it to end, stop it, or pass another --workdir.') from None
    holder = (f'pid {os.getpid()} on {socket.gethostname()}, started '
              f'{datetime.datetime.now().astimezone().isoformat(timespec="seconds")}: '
              f'{" ".join(sys.argv)}')
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, holder.encode('utf-8', errors='replace') + b'\n', 0)
    yield path
  finally:
    os.close(descriptor)  # Closing the last descriptor releases the flock.
