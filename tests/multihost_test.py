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

from child_process import TESTS_DIR, child_env, max_abs_difference, params_of

WORKER = os.path.join(TESTS_DIR, 'data_parallel_worker.py')
NUM_PROCESSES = 2


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_two_hosts_match_each_other_and_a_single_process(tmp_path, compilation_cache, mode):
  coordinator = f'127.0.0.1:{portpicker.pick_unused_port()}'
  outputs = [tmp_path / f'host{i}.npz' for i in range(NUM_PROCESSES)]
  reference_out = tmp_path / 'reference.npz'
  processes = [
      subprocess.Popen([sys.executable, WORKER, 'host', str(outputs[i]), mode, coordinator,
                        str(i), str(NUM_PROCESSES)], env=child_env(compilation_cache, num_devices=2),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(NUM_PROCESSES)]
  processes.append(subprocess.Popen([sys.executable, WORKER, 'reference', str(reference_out)],
                                    env=child_env(compilation_cache, num_devices=1), stdout=subprocess.PIPE,
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
  host_params = [params_of(host, 'host') for host in hosts]
  reference_params = params_of(reference, 'reference')
  assert max_abs_difference(params_of(reference, 'init'), reference_params) > 1e-2
  assert max_abs_difference(host_params[0], host_params[1]) == 0.0
  assert max_abs_difference(host_params[0], reference_params) < 1e-5
  np.testing.assert_allclose(hosts[0]['host/loss'], reference['reference/loss'], rtol=1e-5)
  np.testing.assert_allclose(hosts[0]['host/grad_norm'], reference['reference/grad_norm'],
                             rtol=1e-5)
