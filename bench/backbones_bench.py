r"""Times the ViT / ConvNeXt backbones and the loading of timm-sized checkpoints.

For each preset: jitted forward (eval) and forward+backward (gradients of the
mean square of every output w.r.t. the params), warmed up, then timed
--repeats times; the median is reported with the parameter count. Then, for
the registered timm models recorded in tests/fixtures/timm_registry_shapes.json,
the time `load_pretrained` takes to map a random state dict of that exact
shape onto the preset (including position-embedding resampling to
--image_size and the RGB -> 1 channel reduction). Last, `depthwise_conv2d`
alone at ConvNeXt-T's stage shapes for --image_size (7x7, the --batch),
forward and forward+backward, in every --depthwise implementation: the numbers
behind the choice that implementation='auto' makes on this device. Prints a
table and writes bench/results/backbones_bench.json.

  python bench/backbones_bench.py --vit=tiny_cpu,s/16 --convnext=tiny_cpu,tiny \
      --image_size=224 --batch=2 --repeats=5
"""
import json
import os
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

import bench_common
from mdiqa_jax.convert import load_pretrained
from mdiqa_jax.models.convnext import ConvNeXt, convnext_config
from mdiqa_jax.models.vit import ViT, vit_config
from mdiqa_jax.ops import depthwise_conv2d

_VIT = flags.DEFINE_list('vit', ['tiny_cpu'], 'ViT presets to time.')
_CONVNEXT = flags.DEFINE_list('convnext', ['tiny_cpu'], 'ConvNeXt presets to time.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Input side, pixels.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Batch size.')
_CHANNELS = flags.DEFINE_integer('channels', 1, 'Input channels.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement.')
_LOAD = flags.DEFINE_list('load', ['vit_tiny_patch16_224:ti/16', 'convnext_atto:atto'],
                          'timm_name:preset pairs whose checkpoint loading is timed.')
_DEPTHWISE = flags.DEFINE_list('depthwise', ['shifted', 'xla'],
                               'depthwise_conv2d implementations to time.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results', 'backbones_bench.json'),
    'JSON file to write.')

_REGISTRY = (pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'fixtures' /
             'timm_registry_shapes.json')


def _time_backbone(family, preset, module):
  images = jnp.asarray(np.random.default_rng(0).normal(
      size=(_BATCH.value, _IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)), jnp.float32)
  params = jax.jit(module.init)(jax.random.key(0), images)['params']
  forward = jax.jit(lambda p, x: module.apply({'params': p}, x))

  def loss(p, x):
    return sum(jnp.mean(leaf ** 2) for leaf in jax.tree.leaves(module.apply({'params': p}, x)))

  backward = jax.jit(jax.grad(loss))
  return {
      'family': family, 'preset': preset,
      'num_params': sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      'forward_s': bench_common.median_seconds(forward, params, images,
                                               repeats=_REPEATS.value),
      'forward_backward_s': bench_common.median_seconds(backward, params, images,
                                                        repeats=_REPEATS.value),
  }


def _time_depthwise(channels, side, implementation):
  """Median forward and forward+backward seconds of one 7x7 depthwise convolution."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(_BATCH.value, side, side, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(7, 7, 1, channels)), jnp.float32)
  convolve = lambda x, k: depthwise_conv2d(x, k, padding=3, implementation=implementation)
  backward = jax.jit(jax.grad(lambda x, k: jnp.sum(convolve(x, k) ** 2), argnums=(0, 1)))
  return {'implementation': implementation, 'shape': [_BATCH.value, side, side, channels],
          'forward_s': bench_common.median_seconds(jax.jit(convolve), x, kernel,
                                                   repeats=_REPEATS.value),
          'forward_backward_s': bench_common.median_seconds(backward, x, kernel,
                                                            repeats=_REPEATS.value)}


def _time_load(timm_name, preset):
  """Seconds for load_pretrained of a random state dict shaped like timm_name."""
  registry = json.loads(_REGISTRY.read_text())['models'][timm_name]['state_dict']
  rng = np.random.default_rng(0)
  state_dict = {k: rng.normal(size=s).astype(np.float32) for k, s in registry.items()}
  family = 'vit' if timm_name.startswith('vit') else 'convnext'
  module = (ViT(**vit_config(preset)) if family == 'vit'
            else ConvNeXt(**convnext_config(preset)))
  images = jnp.zeros((1, _IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value))
  init = jax.eval_shape(module.init, jax.random.key(0), images)['params']
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, f'{timm_name}.safetensors')
    safetensors.numpy.save_file(state_dict, path)
    start = time.perf_counter()
    _, report = load_pretrained(init, path, family, _IMAGE_SIZE.value)
    seconds = time.perf_counter() - start
  return {'timm_name': timm_name, 'preset': preset, 'load_s': seconds,
          'loaded': len(report.loaded), 'resized': report.resized, 'adapted': report.adapted}


def main(argv):
  del argv
  backbones = [_time_backbone('vit', p, ViT(**vit_config(p))) for p in _VIT.value]
  backbones += [_time_backbone('convnext', p, ConvNeXt(**convnext_config(p)))
                for p in _CONVNEXT.value]
  loads = [_time_load(*pair.split(':')) for pair in _LOAD.value]
  stages = zip(convnext_config('tiny')['widths'], (4, 8, 16, 32))
  depthwise = [_time_depthwise(channels, _IMAGE_SIZE.value // stride, implementation)
               for channels, stride in stages for implementation in _DEPTHWISE.value]
  print(f'{_BATCH.value}x{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}x{_CHANNELS.value} on '
        f'{jax.devices()[0].device_kind}:')
  print(f'{"backbone":<20} {"params":>12} {"forward ms":>12} {"fwd+bwd ms":>12}')
  for row in backbones:
    print(f'{row["family"] + " " + row["preset"]:<20} {row["num_params"]:>12,} '
          f'{1e3 * row["forward_s"]:>12.1f} {1e3 * row["forward_backward_s"]:>12.1f}')
  for row in loads:
    print(f'load {row["timm_name"]} -> {row["preset"]}: {row["load_s"]:.2f} s '
          f'({row["loaded"]} loaded; {row["resized"] + row["adapted"]})')
  for row in depthwise:
    print(f'depthwise 7x7 {row["shape"]} {row["implementation"]:>8}: '
          f'{1e3 * row["forward_s"]:.2f} ms forward, '
          f'{1e3 * row["forward_backward_s"]:.2f} ms forward+backward')
  result = {
      'image_size': _IMAGE_SIZE.value, 'batch': _BATCH.value, 'channels': _CHANNELS.value,
      'repeats': _REPEATS.value, **bench_common.machine_info(),
      'backbones': backbones, 'loads': loads, 'depthwise': depthwise,
  }
  bench_common.write_results(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
