"""One line for user errors (a full disk too, when a library wrapped it), tracebacks for bugs."""
import pytest

from mdiqa_jax import command_errors
from mdiqa_jax import config_validation


def _disk_full_error():
  """The OSError a write to a full disk raises (/dev/full always is)."""
  try:
    with open('/dev/full', 'w', encoding='utf-8') as f:
      f.write('x')
  except OSError as error:
    return error
  raise AssertionError('/dev/full accepted a write')


def _main_raising(error):
  def main(argv):
    del argv
    raise error
  return main


def test_a_full_disk_is_named_even_inside_a_library_error(capsys):
  try:
    try:
      raise _disk_full_error()
    except OSError as cause:
      raise RuntimeError('Error writing "state/d/1f": write failed') from cause
  except RuntimeError as wrapped:
    error = wrapped
  assert command_errors.guard(_main_raising(error), 'mdiqa-train')(['x']) == 1
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith('mdiqa-train: error: disk full: Error writing "state/d/1f"'), line


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
  error = config_validation.ConfigError('config.seed=-1: expected an integer >= 0\n(multi-line)')
  assert command_errors.guard(_main_raising(error), 'mdiqa-train')(['x']) == 1
  assert capsys.readouterr().err == ('mdiqa-train: error: config.seed=-1: expected an integer '
                                     '>= 0 (multi-line)\n')
  with pytest.raises(KeyError):  # A bug: not a user error.
    command_errors.guard(_main_raising(KeyError('params')), 'mdiqa-train')(['x'])
  monkeypatch.setenv(command_errors.TRACEBACK_ENV, '1')
  with pytest.raises(config_validation.ConfigError):
    command_errors.guard(_main_raising(error), 'mdiqa-train')(['x'])
