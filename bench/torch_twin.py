r"""mdiqa_jax against PyTorch eager on the same machine: backbones and ops, interleaved.

  PYTHONPATH=. .venv/bin/python bench/torch_twin.py \
      --torch_python=/work/tvvenv/bin/python [--cases=convnext_t_224,...] [--rounds=3]

Bench-only requirements, kept out of the project's install and CI: a separate
virtual environment with torch, torchvision, timm and safetensors, e.g.

  python3 -m venv /work/tvvenv
  /work/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm safetensors

(timm imports torchvision, and the torch 2.13.0 CPU wheel loads no torchvision
here, so timm and torchvision.ops both run on torch 2.14.1.)

The PyTorch side is bench/torch_twin_worker.py in that interpreter, one process
driven over a pipe, so that only one framework runs at a time. For every case:
1. the worker builds the timm models with seeded random weights (ConvNeXt
   layer scales 0.5 and LayerNorm affines perturbed, so that every block and
   the input matter) and writes them as
   .safetensors; the JAX side loads them through `mdiqa_jax.convert`. Op cases
   share the same random arrays.
2. Both sides compute the outputs and the gradients of sum(mean(out ** 2)) with
   respect to every input on the same data; the relative difference
   max |jax - torch| / max |torch| must be below --tolerance before anything
   is timed.
   JAX compiles ahead of time before that check (compile seconds reported
   apart); each side then makes one untimed warm-up call (reported as
   first_call_seconds).
3. --rounds rounds: in each, for every case and mode, PyTorch makes `repeats`
   timed calls, then JAX makes as many (`repeats` chosen so that a round of a
   case lasts about --round_seconds). Medians of all timed calls are reported
   with ratio = torch / jax (above 1: JAX is faster).
Cases named MODEL_matmuls run only the matrix products of a backbone case: the
JAX side lists every dot_general of the model's forward and forward + backward
jaxprs (bench/matmul_inventory.py) and both sides run that list on the same
operands (bench/matmul_operands.py). With MODEL in the same run, the table ends
with what those products alone allow the whole model (see _matmul_bounds).
Writes bench/results/torch_twin.json, with the load average before and after.
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import bench_common
import matmul_inventory
import matmul_operands
from mdiqa_jax.convert import load_pretrained
from mdiqa_jax.models.convnext import ConvNeXt, convnext_config
from mdiqa_jax.models.vit import ViT, vit_config
from mdiqa_jax.ops import deform_conv2d, depthwise_conv2d

_TORCH_PYTHON = flags.DEFINE_string('torch_python', '/work/tvvenv/bin/python',
                                    'Python interpreter with torch, timm and torchvision.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved timing rounds.')
_ROUND_SECONDS = flags.DEFINE_float('round_seconds', 1.0,
                                    'Target seconds per side, case and mode in one round.')
_TOLERANCE = flags.DEFINE_float('tolerance', 1e-4,
                                'Largest relative difference allowed before timing.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results', 'torch_twin.json'),
    'JSON file to write.')

MODES = ('forward', 'forward_backward')
_VIT_CLASS = 'timm.models.vision_transformer.VisionTransformer'
_CONVNEXT_CLASS = 'timm.models.convnext.ConvNeXt'


def _timm_vit(preset, image_size):
  """(timm spec, JAX module) of one ViT preset at `image_size` px, 1 channel."""
  kwargs = vit_config(preset)
  spec = {'class': _VIT_CLASS, 'key': 'vit', 'family': 'vit',
          'kwargs': dict(img_size=image_size, patch_size=kwargs['patch_size'], in_chans=1,
                         embed_dim=kwargs['width'], depth=kwargs['depth'],
                         num_heads=kwargs['num_heads'], num_classes=0)}
  return spec, ViT(**kwargs)


def _timm_convnext(preset):
  """(timm spec, JAX module) of one ConvNeXt preset, 1 channel."""
  kwargs = convnext_config(preset)
  spec = {'class': _CONVNEXT_CLASS, 'key': 'convnext', 'family': 'convnext',
          'kwargs': dict(in_chans=1, depths=list(kwargs['depths']),
                         dims=list(kwargs['widths']), num_classes=0)}
  return spec, ConvNeXt(**kwargs)


def _backbone_case(name, batch, image_size, backbones):
  return {'name': name, 'kind': 'timm', 'batch': batch, 'image_size': image_size,
          'models': [spec for spec, _ in backbones],
          'modules': [module for _, module in backbones]}


def _matmuls_case(model_case):
  """Only the matrix products (every dot_general) of a backbone case, both sides.

  The JAX side lists them from the model's jaxpr (bench/matmul_inventory.py),
  forward and forward + backward, and both frameworks run that list, each
  product its count of times, on the same operands. Convolutions (the stems,
  ConvNeXt's downsampling) are not in it: the list is a lower bound on what a
  model's matmuls cost.
  """
  return {'name': f'{model_case}_matmuls', 'kind': 'matmuls', 'model_case': model_case}


def _deform_case(batch, size, channels):
  return {'name': f'deform_conv2d_{size}x{size}x{channels}', 'kind': 'deform',
          'batch': batch, 'size': size, 'channels': channels, 'kernel_size': 3,
          'padding': 1}


CASES = {case['name']: case for case in [
    _backbone_case('convnext_t_224', 2, 224, [_timm_convnext('tiny')]),
    _backbone_case('convnext_t_448', 2, 448, [_timm_convnext('tiny')]),
    _backbone_case('vit_b16_224', 2, 224, [_timm_vit('b/16', 224)]),
    _backbone_case('vit_b16_448', 2, 448, [_timm_vit('b/16', 448)]),
    # The default config's two backbones (config_base: 96 px tiles, batch 16).
    _backbone_case('default_backbones_96', 16, 96,
                   [_timm_vit('tiny_cpu', 96), _timm_convnext('tiny_cpu')]),
    _deform_case(2, 24, 64),
    _deform_case(2, 56, 96),
    _deform_case(2, 112, 96),
    {'name': 'depthwise_7x7_112x112x96', 'kind': 'depthwise', 'batch': 2, 'size': 112,
     'channels': 96, 'kernel_size': 7, 'padding': 3},
    _matmuls_case('convnext_t_224'),
    _matmuls_case('convnext_t_448'),
    _matmuls_case('vit_b16_224'),
    _matmuls_case('vit_b16_448'),
    _matmuls_case('default_backbones_96'),
]}

_CASES = flags.DEFINE_list('cases', list(CASES), 'Cases to run, in this order.')


class TorchWorker:
  """bench/torch_twin_worker.py in another interpreter, one JSON line per request."""

  def __init__(self, python):
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_twin_worker.py')
    self._process = subprocess.Popen([python, worker], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

  def request(self, **request):
    self._process.stdin.write(json.dumps(request) + '\n')
    self._process.stdin.flush()
    line = self._process.stdout.readline()
    if not line:
      raise RuntimeError(f'torch worker exited (code {self._process.wait()}) on {request}.')
    return json.loads(line)

  def close(self):
    self._process.stdin.write(json.dumps({'command': 'quit'}) + '\n')
    self._process.stdin.close()
    self._process.wait()


def _case_inputs(case, rng):
  """The case's random arrays (float32, JAX layouts), shared by both sides."""
  if case['kind'] == 'timm':
    size = case['image_size']
    return {'image': rng.normal(size=(case['batch'], size, size, 1)).astype(np.float32)}
  batch, size, channels, kernel_size = (case[k] for k in ('batch', 'size', 'channels',
                                                          'kernel_size'))
  x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
  if case['kind'] == 'depthwise':
    return {'x': x, 'kernel': rng.normal(size=(kernel_size, kernel_size, 1, channels))
            .astype(np.float32) / kernel_size}
  taps = kernel_size * kernel_size
  return {'x': x,
          'offset': 2 * rng.normal(size=(batch, size, size, 1, taps, 2)).astype(np.float32),
          'mask': rng.uniform(size=(batch, size, size, 1, taps)).astype(np.float32),
          'kernel': (rng.normal(size=(kernel_size, kernel_size, channels, channels))
                     / np.sqrt(taps * channels)).astype(np.float32)}


def _mean_square_loss(outputs):
  return sum(jnp.mean(out.astype(jnp.float32) ** 2) for out in outputs)


def _backbones_forward(case):
  """forward(params, image) -> the feature outputs of a 'timm' case's backbones."""
  select = {'vit': lambda out: out['tokens'], 'convnext': lambda out: out['stages'][3]}

  def forward(params, image):
    return [select[spec['family']](module.apply({'params': p}, image))
            for spec, module, p in zip(case['models'], case['modules'], params)]
  return forward


def _matmul_inventory(case):
  """(unique products, {mode: counts}) of a 'matmuls' case's model case."""
  model_case = CASES[case['model_case']]
  size = model_case['image_size']
  image = jax.ShapeDtypeStruct((model_case['batch'], size, size, 1), jnp.float32)
  params = [jax.eval_shape(module.init, jax.random.key(0), image)['params']
            for module in model_case['modules']]
  forward = _backbones_forward(model_case)
  loss = lambda *a: _mean_square_loss(forward(*a))
  per_mode = {'forward': matmul_inventory.dot_inventory(loss, params, image),
              'forward_backward': matmul_inventory.dot_inventory(
                  jax.grad(loss, argnums=(0, 1)), params, image)}
  key = lambda row: (tuple(row['lhs_shape']), tuple(row['rhs_shape']), row['einsum'])
  products = {key(row): {k: row[k] for k in ('lhs_shape', 'rhs_shape', 'dtype', 'einsum',
                                             'flops')}
              for rows in per_mode.values() for row in rows}
  index = {k: i for i, k in enumerate(products)}
  counts = {}
  for mode, rows in per_mode.items():
    counts[mode] = [0] * len(products)
    for row in rows:
      counts[mode][index[key(row)]] = row['count']
  return list(products.values()), counts


def _prepare_matmuls(case, worker, directory):
  """The 'matmuls' counterpart of _prepare: both sides run the same product list."""
  products, counts = _matmul_inventory(case)
  spec = {**case, 'products': products, 'counts': counts}
  built = worker.request(command='build', case=spec, directory=directory)
  reference = np.load(os.path.join(directory, f'{case["name"]}_torch.npz'))
  compiled, agreement = [], {}
  for i, product in enumerate(products):
    lhs = jnp.asarray(matmul_operands.operand(product['lhs_shape'], 0))
    rhs = jnp.asarray(matmul_operands.operand(product['rhs_shape'], 1))
    function = jax.jit(functools.partial(jnp.einsum, product['einsum'])).lower(lhs, rhs).compile()
    compiled.append((function, lhs, rhs))
    agreement[f'output_{i}'] = _relative_difference(
        matmul_operands.output_sample(function(lhs, rhs)), reference[f'output_{i}'])
  print(f'{case["name"]}: {len(products)} products, agreement '
        f'{max(agreement.values()):.2e}', flush=True)
  _check_agreement(case['name'], agreement)

  def run(mode):
    for (function, lhs, rhs), count in zip(compiled, counts[mode]):
      for _ in range(count):
        jax.block_until_ready(function(lhs, rhs))

  entry = {'case': spec, 'torch': built['torch'], 'torch_threads': built['threads'],
           'agreement_relative': agreement, 'modes': {}}
  runners = {}
  for mode in MODES:
    record, runners[mode] = _timing_plan(case['name'], mode, worker, run, (mode,))
    entry['modes'][mode] = {
        'flops': sum(p['flops'] * n for p, n in zip(products, counts[mode])),
        'products_per_call': sum(counts[mode]), **record}
  return entry, runners


def _jax_functions(case, inputs, weights):
  """(arguments, forward, forward_backward) of the JAX side of a case.

  forward(*arguments) -> list of outputs; forward_backward(*arguments) ->
  gradients of the mean-square loss w.r.t. every argument.
  """
  if case['kind'] == 'timm':
    image = jnp.asarray(inputs['image'])
    params = []
    for spec, module, path in zip(case['models'], case['modules'], weights):
      init = jax.eval_shape(module.init, jax.random.key(0), image)['params']
      loaded, _ = load_pretrained(init, path, spec['family'], case['image_size'])
      params.append(loaded)
    forward = _backbones_forward(case)
    arguments = (params, image)
  elif case['kind'] == 'deform':
    def forward(x, offset, mask, kernel):
      return [deform_conv2d(x, offset, mask, kernel, padding=case['padding'])]
    arguments = tuple(jnp.asarray(inputs[k]) for k in ('x', 'offset', 'mask', 'kernel'))
  else:
    def forward(x, kernel):
      return [depthwise_conv2d(x, kernel, padding=case['padding'])]
    arguments = (jnp.asarray(inputs['x']), jnp.asarray(inputs['kernel']))
  loss = lambda *a: _mean_square_loss(forward(*a))
  return arguments, forward, jax.grad(loss, argnums=tuple(range(len(arguments))))


def _relative_difference(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-30))


def _agreement(case, arguments, forward, forward_backward, reference):
  """Relative differences of outputs and input gradients, JAX vs torch.

  forward / forward_backward: the compiled JAX functions (see _jax_functions).
  """
  outputs = forward(*arguments)
  gradients = forward_backward(*arguments)
  differences = {f'output_{i}': _relative_difference(out, reference[f'output_{i}'])
                 for i, out in enumerate(outputs)}
  if case['kind'] == 'timm':
    differences['gradient_image'] = _relative_difference(gradients[1],
                                                         reference['gradient_image'])
  else:
    names = ('x', 'offset', 'mask', 'kernel') if case['kind'] == 'deform' else ('x', 'kernel')
    differences.update({f'gradient_{name}': _relative_difference(g, reference[f'gradient_{name}'])
                        for name, g in zip(names, gradients)})
  return differences


def _timed_calls(function, arguments, repeats):
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*arguments))
    seconds.append(time.perf_counter() - start)
  return seconds


def _check_agreement(name, agreement):
  if max(agreement.values()) > _TOLERANCE.value:
    raise AssertionError(f'{name}: JAX and torch differ by more than '
                         f'{_TOLERANCE.value}: {agreement}')


def _timing_plan(name, mode, worker, function, arguments):
  """One untimed call on each side, then (mode record, runner of a round's JAX calls).

  The record holds both first-call times and the calls per round, chosen so
  that a round of the case lasts about --round_seconds on the slower side.
  """
  jax_first = _timed_calls(function, arguments, 1)[0]
  torch_first = worker.request(command='time', name=name, mode=mode, repeats=1)['seconds'][0]
  repeats = int(np.clip(np.ceil(_ROUND_SECONDS.value / max(jax_first, torch_first, 1e-6)),
                        1, 50))
  record = {'jax_first_call_seconds': jax_first, 'torch_first_call_seconds': torch_first,
            'repeats_per_round': repeats, 'jax_seconds': [], 'torch_seconds': []}
  return record, functools.partial(_timed_calls, function, arguments, repeats)


def _prepare(case, worker, directory, *, rng):
  """Builds both sides of a case, checks agreement, compiles and warms up."""
  inputs = _case_inputs(case, rng)
  np.savez(os.path.join(directory, f'{case["name"]}_inputs.npz'), **inputs)
  spec = {k: v for k, v in case.items() if k != 'modules'}
  built = worker.request(command='build', case=spec, directory=directory)
  reference = np.load(os.path.join(directory, f'{case["name"]}_torch.npz'))
  arguments, forward, forward_backward = _jax_functions(case, inputs, built['weights'])
  compiled, compile_seconds = {}, {}
  for mode, function in zip(MODES, (forward, forward_backward)):
    start = time.perf_counter()
    compiled[mode] = jax.jit(function).lower(*arguments).compile()
    compile_seconds[mode] = time.perf_counter() - start
  agreement = _agreement(case, arguments, compiled['forward'],
                         compiled['forward_backward'], reference)
  print(f'{case["name"]}: agreement {agreement}', flush=True)
  _check_agreement(case['name'], agreement)
  entry = {'case': spec, 'torch': built['torch'], 'torch_threads': built['threads'],
           'agreement_relative': agreement, 'modes': {}}
  runners = {}
  for mode in MODES:
    record, runners[mode] = _timing_plan(case['name'], mode, worker, compiled[mode], arguments)
    entry['modes'][mode] = {'jax_compile_seconds': compile_seconds[mode], **record}
  return entry, runners


def _matmul_bounds(entries):
  """Adds to each 'matmuls' entry what its matmuls alone allow the whole model.

  model_ratio_bound = torch's whole-model time / JAX's matmuls-only time: the
  model's torch / jax ratio if every other JAX op took no time at all.
  model_ratio_at_torch_rest = torch's model time / (JAX's matmuls + torch's
  model time not spent in its matmuls): the ratio if JAX ran everything else
  exactly as fast as PyTorch does.
  """
  for entry in entries.values():
    model = entries.get(entry['case'].get('model_case'))
    if entry['case']['kind'] != 'matmuls' or model is None:
      continue
    for mode, record in entry['modes'].items():
      torch_model = model['modes'][mode]['torch_median_seconds']
      torch_rest = max(torch_model - record['torch_median_seconds'], 0.0)
      record['jax_matmul_flops_per_second'] = record['flops'] / record['jax_median_seconds']
      record['torch_matmul_flops_per_second'] = record['flops'] / record['torch_median_seconds']
      record['model_ratio_bound'] = torch_model / record['jax_median_seconds']
      record['model_ratio_at_torch_rest'] = torch_model / (record['jax_median_seconds']
                                                           + torch_rest)
      print(f'{entry["case"]["name"]:<28} {mode:<17} matmul GFLOP/s torch '
            f'{record["torch_matmul_flops_per_second"] / 1e9:.0f} jax '
            f'{record["jax_matmul_flops_per_second"] / 1e9:.0f}; model ratio bound '
            f'{record["model_ratio_bound"]:.2f}, at torch\'s other ops '
            f'{record["model_ratio_at_torch_rest"]:.2f}')


def main(argv):
  del argv
  unknown = sorted(set(_CASES.value) - set(CASES))
  if unknown:
    raise ValueError(f'--cases: unknown {unknown}; expected some of {list(CASES)}.')
  load_before = os.getloadavg()[0]
  worker = TorchWorker(_TORCH_PYTHON.value)
  rng = np.random.default_rng(0)
  entries, runners = {}, {}
  with tempfile.TemporaryDirectory() as directory:
    for name in _CASES.value:
      prepare = (_prepare_matmuls if CASES[name]['kind'] == 'matmuls'
                 else functools.partial(_prepare, rng=rng))
      entries[name], runners[name] = prepare(CASES[name], worker, directory)
    for round_index in range(_ROUNDS.value):
      for name in _CASES.value:
        for mode in MODES:
          record = entries[name]['modes'][mode]
          record['torch_seconds'] += worker.request(
              command='time', name=name, mode=mode,
              repeats=record['repeats_per_round'])['seconds']
          record['jax_seconds'] += runners[name][mode]()
      print(f'round {round_index + 1}/{_ROUNDS.value} done, load {os.getloadavg()[0]:.1f}',
            flush=True)
  worker.close()
  print(f'{"case":<28} {"mode":<17} {"torch ms":>10} {"jax ms":>10} {"torch/jax":>9}')
  for name, entry in entries.items():
    for mode, record in entry['modes'].items():
      record['torch_median_seconds'] = statistics.median(record['torch_seconds'])
      record['jax_median_seconds'] = statistics.median(record['jax_seconds'])
      record['ratio_torch_over_jax'] = (record['torch_median_seconds']
                                        / record['jax_median_seconds'])
      print(f'{name:<28} {mode:<17} {1e3 * record["torch_median_seconds"]:10.1f} '
            f'{1e3 * record["jax_median_seconds"]:10.1f} {record["ratio_torch_over_jax"]:9.2f}')
  _matmul_bounds(entries)
  bench_common.write_results(_OUTPUT.value, {
      'benchmark': 'PyTorch eager (timm / torchvision) vs mdiqa_jax (jit), float32, '
                   'interleaved round by round; ratio = torch / jax',
      **bench_common.machine_info(),
      'load_average_1min_before': load_before,
      'load_average_1min_after': os.getloadavg()[0],
      'rounds': _ROUNDS.value, 'tolerance': _TOLERANCE.value,
      'results': list(entries.values()),
  })


if __name__ == '__main__':
  sys.exit(app.run(main))
