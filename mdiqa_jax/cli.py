"""What every command shares: flags only when run, user errors as one line, quiet logs.

  run_command('mdiqa-x', define_flags, main)
      defines the command's flags (only when it runs as a command, so that
      importing its module defines none), then runs `main(argv, values)`
      under absl with `command_errors`: a user error prints
      `mdiqa-x: error: <message>` and exits 1; library INFO logs are hidden
  no_arguments(argv)   refuses positional arguments (app.UsageError)
"""
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence

from absl import app
from absl import logging as absl_logging

from mdiqa_jax import command_errors

Main = Callable[[Sequence[str], Dict[str, Any]], Optional[int]]
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnInfoOnly(logging.Filter):
  """Passes warnings and errors, and INFO records from mdiqa_jax only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _PACKAGE_DIR in record.pathname


def quiet_library_logging() -> None:
  """Keeps the command-line log readable: Orbax (and TFDS) log every file they
  touch at INFO; only this package's INFO lines and everyone's warnings pass."""
  absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())


def no_arguments(argv: Sequence[str]) -> None:
  """Raises app.UsageError when the command got positional arguments."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')


def flag_values(holders: Dict[str, Any]) -> Dict[str, Any]:
  """{name: value} of the FlagHolders `define_flags` returned."""
  return {name: holder.value for name, holder in holders.items()}


def run_command(command: str, define_flags: Callable[[], Dict[str, Any]], main: Main) -> None:
  """Defines the flags, then runs main(argv, flag values) (module docstring)."""
  holders = define_flags()

  def absl_main(argv: Sequence[str]) -> Optional[int]:
    quiet_library_logging()
    return main(argv, flag_values(holders))
  command_errors.run(absl_main, command)
