"""The data-parallel train step equals the single-device step on the same batch.

A subprocess with 8 fake CPU devices (XLA_FLAGS, so the flag does not leak
into other tests) runs tests/data_parallel_worker.py: one step of a global
batch of 16 under pmap and under shard_map (2 examples per device), against a
reference step written independently in the worker (gradient of the mean loss
over the whole batch on one device, no collectives). The worker uses SGD so
that equal parameters mean equal gradients (see data_parallel_worker.setup).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from child_process import TESTS_DIR, child_env, max_abs_difference, params_of

WORKER = os.path.join(TESTS_DIR, 'data_parallel_worker.py')
EMA_DECAY = 0.5  # data_parallel_worker.EMA_DECAY


@pytest.fixture(scope='module')
def results(tmp_path_factory, compilation_cache):
  out = tmp_path_factory.mktemp('devices') / 'results.npz'
  completed = subprocess.run([sys.executable, WORKER, 'devices', str(out)],
                             env=child_env(compilation_cache, num_devices=8),
                             capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-5000:]
  return dict(np.load(out))


def test_worker_saw_eight_devices(results):
  assert int(results['device_count']) == 8


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_data_parallel_step_equals_single_device_step(results, mode):
  reference = params_of(results, 'reference')
  parallel = params_of(results, mode)
  initial = params_of(results, 'init')
  # The step moved the params well beyond the tolerance, so agreement to 1e-5
  # is not the trivial agreement of two unchanged copies.
  assert max_abs_difference(initial, reference) > 1e-2
  assert max_abs_difference(reference, parallel) < 1e-5
  np.testing.assert_allclose(results[f'{mode}/loss'], results['reference/loss'], rtol=1e-5)
  # A gradient summed twice over devices would show in the norm.
  np.testing.assert_allclose(results[f'{mode}/grad_norm'], results['reference/grad_norm'],
                             rtol=1e-5)
  assert int(results[f'{mode}/step']) == 1


def test_weighted_step_is_the_weighted_mean_over_the_global_batch(results):
  # Weights differ per example and are zero on the first two devices' rows.
  reference = params_of(results, 'reference_weighted')
  parallel = params_of(results, 'pmap_weighted')
  assert max_abs_difference(params_of(results, 'reference'), reference) > 1e-3
  assert max_abs_difference(reference, parallel) < 1e-5
  np.testing.assert_allclose(results['pmap_weighted/loss'], results['reference_weighted/loss'],
                             rtol=1e-5)
  np.testing.assert_allclose(results['pmap_weighted/grad_norm'],
                             results['reference_weighted/grad_norm'], rtol=1e-5)


def test_ema_is_the_decayed_average_of_initial_and_updated_params(results):
  initial = params_of(results, 'init')
  updated = params_of(results, 'pmap')
  ema = {key[len('pmap/ema/'):]: results[key] for key in results
         if key.startswith('pmap/ema/')}
  expected = {k: EMA_DECAY * initial[k] + (1 - EMA_DECAY) * updated[k] for k in initial}
  assert max_abs_difference(ema, expected) < 1e-7
