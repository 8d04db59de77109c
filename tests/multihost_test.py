"""Multi-host data parallelism on one machine: 2 processes, 2 fake CPU devices each.

Two processes joined by `jax.distributed.initialize` (coordinator on
127.0.0.1) each feed their half of a global batch of 16 for 2 train steps
(tests/data_parallel_worker.py `host`); a third, single-device process runs
the independent reference step on the whole batches. Both hosts must end with
identical parameters, equal (1e-5) to the reference.
"""
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
WORKER = os.path.join(TESTS_DIR, 'data_parallel_worker.py')
NUM_PROCESSES = 2


def _env(num_devices: int, cache_dir: str) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONPATH'] = REPO_DIR + os.pathsep + env.get('PYTHONPATH', '')
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _params(results, name):
  prefix = name + '/params/'
  return {key[len(prefix):]: results[key] for key in results if key.startswith(prefix)}


def _max_abs_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_two_hosts_match_each_other_and_a_single_process(tmp_path, compilation_cache, mode):
  coordinator = f'127.0.0.1:{portpicker.pick_unused_port()}'
  cache = compilation_cache
  outputs = [tmp_path / f'host{i}.npz' for i in range(NUM_PROCESSES)]
  reference_out = tmp_path / 'reference.npz'
  processes = [
      subprocess.Popen([sys.executable, WORKER, 'host', str(outputs[i]), mode, coordinator,
                        str(i), str(NUM_PROCESSES)], env=_env(2, cache),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(NUM_PROCESSES)]
  processes.append(subprocess.Popen([sys.executable, WORKER, 'reference', str(reference_out)],
                                    env=_env(1, cache), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True))
  try:
    logs = [process.communicate(timeout=300)[0] for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-5000:]

  hosts = [dict(np.load(path)) for path in outputs]
  reference = dict(np.load(reference_out))
  for host in hosts:
    assert int(host['process_count']) == NUM_PROCESSES
    assert int(host['device_count']) == 4
    assert int(host['host/step']) == 2
  host_params = [_params(host, 'host') for host in hosts]
  reference_params = _params(reference, 'reference')
  assert _max_abs_difference(_params(reference, 'init'), reference_params) > 1e-2
  assert _max_abs_difference(host_params[0], host_params[1]) == 0.0
  assert _max_abs_difference(host_params[0], reference_params) < 1e-5
  np.testing.assert_allclose(hosts[0]['host/loss'], reference['reference/loss'], rtol=1e-5)
  np.testing.assert_allclose(hosts[0]['host/grad_norm'], reference['reference/grad_norm'],
                             rtol=1e-5)
