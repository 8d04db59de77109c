"""Helpers the bench/ scripts share: timing, the machine record, the JSON write.

The scripts run as `PYTHONPATH=. python bench/NAME.py`, so bench/ is on
sys.path and they `import bench_common`. jax is imported inside the functions
that need it: simulate_bench's spawned pool workers re-import the script, and
its timings must not include a jax import the simulator does not need.
"""
import os
import platform
import statistics
import time
from typing import Any, Callable

from mdiqa_jax import files


def median_seconds(function: Callable[..., Any], *arguments: Any, repeats: int,
                   warmup: int = 1) -> float:
  """Median wall time of `repeats` calls of `function(*arguments)`.

  `warmup` untimed calls come first (the first one compiles a jitted
  function); every call is waited for with jax.block_until_ready.
  """
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(function(*arguments))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*arguments))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def machine_info() -> dict[str, Any]:
  """The device, jax version, CPU and current load, for a result's JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  return {
      'device': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'platform': jax.default_backend(),
      'jax': jax.__version__,
      'machine': platform.machine(),
      'cpu_count': os.cpu_count(),
      # Other jobs on a shared machine inflate timings; the load says how much.
      'load_average_1min': os.getloadavg()[0],
  }


def write_results(path: str, result: dict[str, Any]) -> None:
  """Writes `result` to `path` as JSON (atomically) and says so."""
  files.write_json_atomically(path, result)
  print(f'Wrote {path}')
