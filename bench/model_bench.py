r"""Parameter counts and forward / forward+backward time of MD-IQA variants.

  python bench/model_bench.py --configs=configs/default.py,configs/paper.py \
      [--batch=2] [--repeats=5]

For each config: parameters per top-level module, compile time, and the median
jitted forward and forward+backward time for a batch of single-channel slices at
config.data.image_size, on whatever device JAX picks. Prints a table and writes
bench/results/model_bench.json. Timings on a shared machine are noisy; compare
variants measured in the same run.
"""
import importlib.util
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import bench_common
from mdiqa_jax import losses, models

_CONFIGS = flags.DEFINE_list('configs', ['configs/default.py', 'configs/paper.py'],
                             'Config files to measure.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Slices per batch.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repetitions (median reported).')
_OUTPUT = flags.DEFINE_string('output', 'bench/results/model_bench.json', 'JSON output.')


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(path):
  config = load_config(path)
  model = models.create_model(config)
  size = config.data.image_size
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(_BATCH.value, size, size, 1)),
                       jnp.float32)
  batch = {'image': images, 'score': jnp.full((_BATCH.value,), 2.0)}
  params = jax.jit(lambda rng: model.init({'params': rng}, images))(
      jax.random.PRNGKey(0))['params']
  loss_fn = losses.make_loss_fn(config)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x)['score'])

  def objective(p):
    return jnp.mean(loss_fn(model.apply({'params': p}, images, train=True,
                                        rngs={'dropout': jax.random.PRNGKey(1)}), batch)[0])
  backward = jax.jit(jax.grad(objective))

  start = time.perf_counter()
  forward.lower(params, images).compile()
  forward_compile = time.perf_counter() - start
  start = time.perf_counter()
  backward.lower(params).compile()
  backward_compile = time.perf_counter() - start
  return {
      'config': path,
      'image_size': size,
      'batch': _BATCH.value,
      'params_total': models.count_params(params),
      'params_by_module': {name: models.count_params(sub) for name, sub in params.items()},
      'forward_compile_s': forward_compile,
      'forward_backward_compile_s': backward_compile,
      'forward_s': bench_common.median_seconds(forward, params, images,
                                               repeats=_REPEATS.value),
      'forward_backward_s': bench_common.median_seconds(backward, params,
                                                        repeats=_REPEATS.value),
  }


def main(argv):
  del argv
  results = [measure(path) for path in _CONFIGS.value]
  for r in results:
    print(f"{r['config']}: {r['params_total'] / 1e6:.2f} M params at {r['image_size']}px, "
          f"batch {r['batch']}: forward {1e3 * r['forward_s']:.0f} ms, "
          f"forward+backward {1e3 * r['forward_backward_s']:.0f} ms "
          f"(compile {r['forward_compile_s']:.0f} s / {r['forward_backward_compile_s']:.0f} s)")
    print('   ', {k: f'{v / 1e6:.2f} M' for k, v in r['params_by_module'].items()})
  if len(results) > 1:
    base = results[0]
    for r in results[1:]:
      print(f"{r['config']} / {base['config']} forward time ratio: "
            f"{r['forward_s'] / base['forward_s']:.1f}x")
  # 'platform' (the OS here) and 'load_average' (1, 5, 15 min) as in earlier
  # model_bench.json files.
  bench_common.write_results(_OUTPUT.value, {
      **bench_common.machine_info(), 'platform': platform.platform(),
      'load_average': os.getloadavg(), 'results': results})


if __name__ == '__main__':
  app.run(main)
