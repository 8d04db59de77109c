"""The PyTorch side of bench/torch_twin.py: one process, driven over stdin / stdout.

Runs in a virtual environment with torch, timm and safetensors (torchvision for
the deformable-convolution cases), never in the project's: it imports neither
jax nor mdiqa_jax. bench/torch_twin.py starts it and sends one JSON object per
line; it answers one JSON object per line (anything else goes to stderr):

  {"command": "build", "case": CASE, "directory": DIR}
      builds the case from the arrays in DIR/NAME_inputs.npz (NHWC, the JAX
      layouts). Model cases ("kind": "timm") create their timm models with
      seeded random weights (timm's init, ConvNeXt layer scales 0.5,
      LayerNorm affines perturbed), write them to DIR/NAME_MODEL.safetensors for the
      JAX side to convert, and write DIR/NAME_torch.npz: the forward output
      (NHWC) and the gradient of the loss w.r.t. every input, in the JAX
      layouts. Answers {"torch": version, "threads": n, "weights": [paths]}.
  {"command": "time", "name": NAME, "mode": "forward" | "forward_backward",
   "repeats": n}
      answers {"seconds": [n wall times]}.
  {"command": "quit"}

"matmuls" cases send their product list instead of models (see _MatmulCase).

The loss of forward_backward is, as on the JAX side, the sum over outputs of
mean(output ** 2); gradients flow to every parameter and input.
"""
import importlib
import json
import os
import sys
import time

import numpy as np
import torch

import matmul_operands

_LAYER_SCALE = 0.5  # timm initialises ConvNeXt's gammas to 1e-6: blocks would be ~identity.
# LayerNorm affines drawn around timm's (1, 0): with unit scales and zero shifts
# the mean square of normed tokens is ~1 whatever the input, and its gradient
# w.r.t. the image would be rounding noise.
_NORM_AFFINE_STD = 0.2


def _to_torch_image(array):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1)))


def _to_jax_image(tensor):
  return np.moveaxis(tensor.detach().numpy(), 1, -1)


def _create_model(spec, seed):
  """A timm model from {"class": "module.Class", "kwargs": {...}}, eval mode."""
  module_name, class_name = spec['class'].rsplit('.', 1)
  torch.manual_seed(seed)
  model = getattr(importlib.import_module(module_name), class_name)(**spec['kwargs'])
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if name.endswith('gamma'):
        parameter.fill_(_LAYER_SCALE)
    for module in model.modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.add_(_NORM_AFFINE_STD * torch.randn_like(module.weight))
        module.bias.add_(_NORM_AFFINE_STD * torch.randn_like(module.bias))
  return model.eval()


def _feature_output(model, image):
  """timm forward_features, NCHW for ConvNeXt, (B, N, D) tokens for a ViT."""
  return model.forward_features(image)


class _TimmCase:
  """One or more timm backbones applied to the same image."""

  def __init__(self, case, directory):
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    inputs = np.load(os.path.join(directory, f'{case["name"]}_inputs.npz'))
    self.image = _to_torch_image(inputs['image'])
    self.models = [_create_model(spec, seed) for seed, spec in enumerate(case['models'])]
    self.weights = []
    for spec, model in zip(case['models'], self.models):
      path = os.path.join(directory, f'{case["name"]}_{spec["key"]}.safetensors')
      safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                  path)
      self.weights.append(path)
    image = self.image.clone().requires_grad_(True)
    outputs = [_feature_output(model, image) for model in self.models]
    sum(torch.mean(out ** 2) for out in outputs).backward()
    reference = {f'output_{i}': (_to_jax_image(out) if out.ndim == 4 else out.detach().numpy())
                 for i, out in enumerate(outputs)}
    reference['gradient_image'] = _to_jax_image(image.grad)
    np.savez(os.path.join(directory, f'{case["name"]}_torch.npz'), **reference)
    self.image_with_gradient = self.image.clone().requires_grad_(True)

  def forward(self):
    with torch.no_grad():
      return [_feature_output(model, self.image) for model in self.models]

  def forward_backward(self):
    for model in self.models:
      model.zero_grad(set_to_none=True)
    image = self.image_with_gradient
    image.grad = None
    outputs = [_feature_output(model, image) for model in self.models]
    sum(torch.mean(out ** 2) for out in outputs).backward()


class _OpCase:
  """torchvision.ops.deform_conv2d or a depthwise F.conv2d on the JAX side's arrays."""

  def __init__(self, case, directory):
    inputs = np.load(os.path.join(directory, f'{case["name"]}_inputs.npz'))
    self.padding = case['padding']
    if case['kind'] == 'deform':
      import torchvision  # pylint: disable=g-import-not-at-top
      batch, out_h, out_w, groups, taps, _ = inputs['offset'].shape
      offset = np.moveaxis(inputs['offset'], (1, 2), (4, 5)).reshape(batch, -1, out_h, out_w)
      mask = np.moveaxis(inputs['mask'], (1, 2), (3, 4)).reshape(batch, -1, out_h, out_w)
      self.arguments = [_to_torch_image(inputs['x']), torch.from_numpy(offset.copy()),
                        torch.from_numpy(mask.copy()),
                        torch.from_numpy(np.transpose(inputs['kernel'], (3, 2, 0, 1)).copy())]
      self.names = ['x', 'offset', 'mask', 'kernel']
      self.function = lambda x, offset, mask, kernel: torchvision.ops.deform_conv2d(
          x, offset, kernel, padding=self.padding, mask=mask)
      self.to_jax = [_to_jax_image,
                     lambda t: np.moveaxis(t.detach().numpy().reshape(
                         batch, groups, taps, 2, out_h, out_w), (4, 5), (1, 2)),
                     lambda t: np.moveaxis(t.detach().numpy().reshape(
                         batch, groups, taps, out_h, out_w), (3, 4), (1, 2)),
                     lambda t: np.transpose(t.detach().numpy(), (2, 3, 1, 0))]
    else:
      channels = inputs['x'].shape[-1]
      self.arguments = [_to_torch_image(inputs['x']),
                        torch.from_numpy(np.transpose(inputs['kernel'], (3, 2, 0, 1)).copy())]
      self.names = ['x', 'kernel']
      self.function = lambda x, kernel: torch.nn.functional.conv2d(
          x, kernel, padding=self.padding, groups=channels)
      self.to_jax = [_to_jax_image, lambda t: np.transpose(t.detach().numpy(), (2, 3, 1, 0))]
    self.weights = []
    leaves = [a.clone().requires_grad_(True) for a in self.arguments]
    out = self.function(*leaves)
    torch.mean(out ** 2).backward()
    reference = {'output_0': _to_jax_image(out)}
    reference.update({f'gradient_{name}': convert(leaf.grad)
                      for name, convert, leaf in zip(self.names, self.to_jax, leaves)})
    np.savez(os.path.join(directory, f'{case["name"]}_torch.npz'), **reference)
    self.leaves = [a.clone().requires_grad_(True) for a in self.arguments]

  def forward(self):
    with torch.no_grad():
      return self.function(*self.arguments)

  def forward_backward(self):
    for leaf in self.leaves:
      leaf.grad = None
    torch.mean(self.function(*self.leaves) ** 2).backward()


class _MatmulCase:
  """The product list of a "matmuls" case: torch.einsum on bench/matmul_operands.py's arrays.

  case["products"]: [{"lhs_shape", "rhs_shape", "einsum"}]; case["counts"]:
  {mode: [how often each product runs per call]}. Writes the output samples of
  every product to DIR/NAME_torch.npz.
  """

  def __init__(self, case, directory):
    self.products = [(p['einsum'],
                      torch.from_numpy(matmul_operands.operand(p['lhs_shape'], 0)),
                      torch.from_numpy(matmul_operands.operand(p['rhs_shape'], 1)))
                     for p in case['products']]
    self.counts = case['counts']
    self.weights = []
    with torch.no_grad():
      reference = {f'output_{i}': matmul_operands.output_sample(torch.einsum(*p).numpy())
                   for i, p in enumerate(self.products)}
    np.savez(os.path.join(directory, f'{case["name"]}_torch.npz'), **reference)

  def _run(self, mode):
    with torch.no_grad():
      for product, count in zip(self.products, self.counts[mode]):
        for _ in range(count):
          torch.einsum(*product)

  def forward(self):
    self._run('forward')

  def forward_backward(self):
    self._run('forward_backward')


def _time(function, repeats):
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    seconds.append(time.perf_counter() - start)
  return seconds


def main():
  cases = {}
  for line in sys.stdin:
    request = json.loads(line)
    if request['command'] == 'quit':
      break
    if request['command'] == 'build':
      case = request['case']
      build = {'timm': _TimmCase, 'matmuls': _MatmulCase}.get(case['kind'], _OpCase)
      cases[case['name']] = build(case, request['directory'])
      answer = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                'weights': cases[case['name']].weights}
    else:
      case = cases[request['name']]
      answer = {'seconds': _time(getattr(case, request['mode']), request['repeats'])}
    sys.stdout.write(json.dumps(answer) + '\n')
    sys.stdout.flush()


if __name__ == '__main__':
  main()
