r"""Times deform_conv2d against lax.conv_general_dilated of the same shape.

Forward and forward+backward (gradients w.r.t. every input) are jitted, warmed
up, then timed --repeats times; the median is reported, with the ratio
deform / conv measured in the same run. deform_conv2d runs twice: as it
chooses its chunks of output rows ('deform') and with all rows in one chunk
('deform_one_chunk', the op before chunking). For each, the temporary bytes of
the compiled forward+backward (XLA's memory analysis) are reported. Prints a
table and writes bench/results/deform_bench.json.

  python bench/deform_bench.py --repeats=20
"""
import functools
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import bench_common
from mdiqa_jax.ops import deform_conv2d

_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed calls per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed calls after compiling.')
_OFFSET_GROUPS = flags.DEFINE_integer('offset_groups', 1,
                                      'offset_groups of the deformable conv.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results',
                           'deform_bench.json'), 'JSON file to write.')

# (batch, height, width, in_channels, out_channels, kernel_size): the
# alignment-block scales MD-IQA uses (CNN features at 1/8 and 1/16 of a crop),
# and the paper config's finest (1/4 of 448 px, ConvNeXt-T's 96 channels).
_SHAPES = ((2, 32, 32, 64, 64, 3), (2, 16, 16, 128, 128, 3), (2, 112, 112, 96, 96, 3))


def _forward_and_backward(forward, num_arguments):
  """jit of (inputs) -> gradients of sum(forward(inputs)**2) w.r.t. all."""
  loss = lambda *arguments: jnp.sum(forward(*arguments) ** 2)
  return jax.jit(jax.grad(loss, argnums=tuple(range(num_arguments))))


def _temporary_bytes(jitted, *arguments):
  """Bytes of temporaries XLA allocates for one call (compiled memory analysis)."""
  return jitted.lower(*arguments).compile().memory_analysis().temp_size_in_bytes


def _benchmark_shape(batch, height, width, in_channels, out_channels,
                     kernel_size):
  """Returns the timings of one shape, padding 'same', stride 1."""
  rng = np.random.default_rng(0)
  taps = kernel_size * kernel_size
  groups = _OFFSET_GROUPS.value
  padding = kernel_size // 2
  x = jnp.asarray(rng.normal(size=(batch, height, width, in_channels)),
                  jnp.float32)
  offset = jnp.asarray(
      2 * rng.normal(size=(batch, height, width, groups, taps, 2)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(batch, height, width, groups, taps)),
                     jnp.float32)
  kernel = jnp.asarray(
      rng.normal(size=(kernel_size, kernel_size, in_channels, out_channels))
      / np.sqrt(taps * in_channels), jnp.float32)

  def deform(x, offset, mask, kernel):
    return deform_conv2d(x, offset, mask, kernel, padding=padding,
                         offset_groups=groups)

  def deform_one_chunk(x, offset, mask, kernel):
    return deform_conv2d(x, offset, mask, kernel, padding=padding,
                         offset_groups=groups, rows_per_chunk=height)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  deform_inputs = (x, offset, mask, kernel)
  conv_inputs = (x, kernel)
  # The first call compiles; --warmup more calls follow before the timed ones.
  median_seconds = functools.partial(bench_common.median_seconds,
                                     repeats=_REPEATS.value,
                                     warmup=1 + _WARMUP.value)
  backward = {'deform': _forward_and_backward(deform, 4),
              'deform_one_chunk': _forward_and_backward(deform_one_chunk, 4)}
  seconds = {
      'deform_forward': median_seconds(jax.jit(deform), *deform_inputs),
      'deform_one_chunk_forward': median_seconds(jax.jit(deform_one_chunk),
                                                 *deform_inputs),
      'conv_forward': median_seconds(jax.jit(conv), *conv_inputs),
      'deform_forward_backward': median_seconds(backward['deform'], *deform_inputs),
      'deform_one_chunk_forward_backward': median_seconds(
          backward['deform_one_chunk'], *deform_inputs),
      'conv_forward_backward': median_seconds(
          _forward_and_backward(conv, 2), *conv_inputs),
  }
  temporary_bytes = {name: _temporary_bytes(function, *deform_inputs)
                     for name, function in backward.items()}
  return {
      'shape': dict(batch=batch, height=height, width=width,
                    in_channels=in_channels, out_channels=out_channels,
                    kernel_size=kernel_size, offset_groups=groups),
      'median_ms': {name: 1e3 * value for name, value in seconds.items()},
      'ratio_forward': seconds['deform_forward'] / seconds['conv_forward'],
      'ratio_forward_backward': (seconds['deform_forward_backward']
                                 / seconds['conv_forward_backward']),
      'forward_backward_temporary_bytes': temporary_bytes,
      'temporary_bytes_cut': (temporary_bytes['deform_one_chunk']
                              / temporary_bytes['deform']),
  }


def main(argv):
  del argv
  results = []
  print(f'{"B,H,W,Cin->Cout,k":>22} {"deform fwd":>11} {"conv fwd":>9} '
        f'{"ratio":>6} {"deform f+b":>11} {"conv f+b":>9} {"ratio":>6}  (ms)')
  for shape in _SHAPES:
    result = _benchmark_shape(*shape)
    results.append(result)
    ms = result['median_ms']
    batch, height, width, in_channels, out_channels, kernel_size = shape
    label = (f'{batch},{height},{width},{in_channels}->{out_channels},'
             f'{kernel_size}')
    print(f'{label:>22} {ms["deform_forward"]:11.2f} {ms["conv_forward"]:9.2f} '
          f'{result["ratio_forward"]:6.1f} '
          f'{ms["deform_forward_backward"]:11.2f} '
          f'{ms["conv_forward_backward"]:9.2f} '
          f'{result["ratio_forward_backward"]:6.1f}  temporaries one chunk / chunked '
          f'{result["temporary_bytes_cut"]:.1f}x')
  report = {
      'benchmark': 'deform_conv2d vs lax.conv_general_dilated, jit, float32',
      **bench_common.machine_info(),
      'jax_version': jax.__version__,  # The key of earlier deform_bench.json.
      'repeats': _REPEATS.value,
      'warmup': _WARMUP.value,
      'results': results,
  }
  bench_common.write_results(_OUTPUT.value, report)


if __name__ == '__main__':
  app.run(main)
