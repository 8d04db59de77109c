"""SIGTERM (preemption) handling for a training job: every phase ends cleanly."""
import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

import jax
import orbax.checkpoint as ocp


class Preemption(BaseException):
  """SIGTERM arrived outside the train loop (a BaseException, like
  KeyboardInterrupt, so that no library's `except Exception` swallows it)."""


class PreemptionWatcher:
  """SIGTERM handling for a whole training job: every phase ends cleanly.

  Use as a context manager; the previous handler is restored on exit. Inside
  `polling()` (the train loop and its checkpoint writes) SIGTERM only sets a
  flag that the loop polls with `should_stop`, then saves and exits. Anywhere
  else (building the dataset, restoring, the final evaluation) SIGTERM raises
  `Preemption` at once; every file those phases write is written atomically,
  so nothing is left half-written. With several hosts, Orbax's preemption
  sync point (`reached_preemption`) makes every host stop at the same step;
  on one host the flag alone does.
  """

  def __init__(self):
    self._event = threading.Event()
    self._polling = 0
    self._previous: Optional[Callable] = None
    self._installed = False

  def __enter__(self) -> 'PreemptionWatcher':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)

  @contextlib.contextmanager
  def polling(self) -> Iterator['PreemptionWatcher']:
    """SIGTERM sets the flag instead of raising, for the block."""
    if self._event.is_set():
      raise Preemption()
    self._polling += 1
    try:
      yield self
    finally:
      self._polling -= 1

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._event.set()
    if not self._polling:
      raise Preemption()

  @property
  def received(self) -> bool:
    return self._event.is_set()

  def should_stop(self, step: int) -> bool:
    """True when this step is where training must save and exit."""
    if jax.process_count() > 1:
      return ocp.utils.reached_preemption(step)
    return self._event.is_set()
