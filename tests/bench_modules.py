"""bench/ scripts imported by tests: `load(name)` returns bench/<name>.py as module `name`.

The bench scripts import their siblings by bare name (they run with bench/ on
sys.path), so each is registered in sys.modules under that name.
"""
import importlib.util
import os
import sys

import child_process

BENCH_DIR = os.path.join(child_process.REPO_DIR, 'bench')


def load(name):
  """bench/<name>.py as module `name`, loaded once."""
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH_DIR, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]
