"""Child process of the corpus test: walks and reads inputs under a memory limit.

  python read_worker.py LIMIT_BYTES PATH...

After its imports it caps its address space at LIMIT_BYTES (RLIMIT_AS), so
that any reader allocating more fails with MemoryError instead of taking the
machine; then it runs `io.find_inputs(PATHS)` and reads every file found, one
JSON line per event on stdout, flushed at once, so that the parent can put a
time limit on each step and name the file a hang happened on:
  {"event": "walked", "files": [...], "failures": {path: reason}}
  {"event": "start", "path": ...}
  {"event": "read", "path": ..., "slices": n, "messages": [...]}
  {"event": "refused", "path": ..., "reason": ...}
  {"event": "crashed", "path": ..., "error": "<type>: <message>"}
"""
import json
import resource
import sys

from mdiqa_jax import io as ct_io


def _emit(**event) -> None:
  sys.stdout.write(json.dumps(event) + '\n')
  sys.stdout.flush()


def main(limit: int, paths: list) -> None:
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  found = ct_io.find_inputs(paths)
  _emit(event='walked', files=[path for path, _ in found.files],
        failures={e.path: e.reason for e in found.failures})
  for path, kind in found.files:
    _emit(event='start', path=path)
    try:
      with ct_io.capture_messages() as messages:
        slices = ct_io.read_file(path, kind)
      _emit(event='read', path=path, slices=len(slices), messages=messages)
    except ct_io.InputFileError as e:
      _emit(event='refused', path=path, reason=e.reason)
    except BaseException as e:  # pylint: disable=broad-except  (what the test looks for)
      _emit(event='crashed', path=path, error=f'{type(e).__name__}: {e}')


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2:])
