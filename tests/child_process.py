"""Running the package in a child process: commands under test and device workers.

  child_env(cache_dir, num_devices=None)  the environment for the child
  params_of(results, name)                a worker's saved params, by path
  max_abs_difference(a, b)                largest |a - b| over those
"""
import os
from typing import Dict, Optional

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)


def child_env(cache_dir: Optional[str] = None,
              num_devices: Optional[int] = None) -> Dict[str, str]:
  """The environment of a child process on CPU that imports this checkout.

  Args:
    cache_dir: JAX's persistent compilation cache, shared by the children of
      a test session (each compilation is then paid once); None = no cache.
    num_devices: fake CPU devices (XLA_FLAGS); None = the platform's one device,
      whatever this (parent) process was given.
  """
  env = dict(os.environ, PYTHONPATH=REPO_DIR + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  if num_devices is None:
    env.pop('XLA_FLAGS', None)
  else:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  return env


def params_of(results, name: str) -> Dict:
  """The '<name>/params/...' arrays of a worker's results, keyed by the rest of the path."""
  prefix = name + '/params/'
  return {key[len(prefix):]: results[key] for key in results if key.startswith(prefix)}


def max_abs_difference(a: Dict, b: Dict) -> float:
  """Largest |a - b| over arrays of the same keys."""
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
