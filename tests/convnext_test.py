"""ConvNeXt backbone: shapes under jit, gradients, drop path, and parity with timm.

The timm outputs come from tests/fixtures/ (written by make_timm_fixtures.py
with torch + timm); CI reads them without torch.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax.convert import convnext as convert_convnext
from mdiqa_jax.models.convnext import ConvNeXt, ConvNeXtBlock, convnext_config

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
# The fixture models: timm ConvNeXt(depths=(1,1,1,1), dims=(8,16,32,64),
# num_classes=0), with conv_mlp False ('convnext') and True ('convnext_convmlp').
FIXTURE_CONVNEXT = dict(depths=(1, 1, 1, 1), widths=(8, 16, 32, 64))


def random_params(module, images, seed=0):
  """Seeded N(0, 0.1) params of the module's init shapes.

  Avoids compiling the initializers (slow on a busy 2-core CPU); shapes come
  from the module's own init via jax.eval_shape.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(np.float32), shapes)


def test_convnext_tiny_cpu_shapes_under_jit_and_finite_gradients():
  model = ConvNeXt(**convnext_config('tiny_cpu'))
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
  params = random_params(model, images)

  def loss(p):
    out = model.apply({'params': p}, images)
    value = sum(jnp.mean(s ** 2) for s in out['stages']) + jnp.mean(out['pre_logits'] ** 2)
    return value, out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert [s.shape for s in out['stages']] == [(2, 16, 16, 16), (2, 8, 8, 32),
                                              (2, 4, 4, 64), (2, 2, 2, 128)]
  assert out['pre_logits'].shape == (2, 128)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(params))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads['stem_conv']['kernel']).sum()) > 0


@pytest.mark.parametrize('fixture', ['convnext', 'convnext_convmlp'])
def test_convnext_matches_timm_every_stage_and_pre_logits(fixture):
  reference = np.load(FIXTURES / f'{fixture}_timm_outputs.npz')
  model = ConvNeXt(**FIXTURE_CONVNEXT)
  init = jax.eval_shape(model.init, jax.random.key(0), reference['input'])['params']
  params, report = convert_convnext.load(init, FIXTURES / f'{fixture}_timm.safetensors')
  assert len(report.loaded) == len(jax.tree.leaves(init))
  out = jax.jit(model.apply)({'params': params}, reference['input'])
  for stage in range(4):
    np.testing.assert_allclose(out['stages'][stage], reference[f'stage_{stage}'],
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['pre_logits'], reference['pre_logits'], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('depthwise_implementation, remat', [
    ('xla', False), ('shifted', True)])
def test_convnext_depthwise_paths_and_remat_match_timm_and_gradients(depthwise_implementation,
                                                                     remat):
  reference = np.load(FIXTURES / 'convnext_timm_outputs.npz')
  model = ConvNeXt(**FIXTURE_CONVNEXT)
  variant = ConvNeXt(**FIXTURE_CONVNEXT, depthwise_implementation=depthwise_implementation,
                     remat=remat)
  init = jax.eval_shape(model.init, jax.random.key(0), reference['input'])['params']
  params, _ = convert_convnext.load(init, FIXTURES / 'convnext_timm.safetensors')
  out = jax.jit(variant.apply)({'params': params}, reference['input'])
  np.testing.assert_allclose(out['stages'][3], reference['stage_3'], rtol=1e-5, atol=1e-5)

  def gradient(module):
    def loss(p):
      return sum(jnp.sum(s ** 2) for s in module.apply({'params': p}, reference['input'])['stages'])
    return jax.jit(jax.grad(loss))(params)

  for ours, expected in zip(jax.tree.leaves(gradient(variant)),
                            jax.tree.leaves(gradient(model))):
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(ours / scale, expected / scale, atol=1e-5)


def test_convnext_block_drop_path_keeps_or_drops_whole_samples():
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 4))
  block = ConvNeXtBlock(drop_path=0.5)
  params = random_params(block, images)
  params['layer_scale'] = np.ones_like(params['layer_scale'])
  residual = block.apply({'params': params}, images) - images
  trained = block.apply({'params': params}, images, train=True,
                        rngs={'dropout': jax.random.key(2)})
  dropped = np.all(np.isclose(trained, images, atol=1e-6), axis=(1, 2, 3))
  kept = np.all(np.isclose(trained, images + residual / 0.5, atol=1e-5), axis=(1, 2, 3))
  assert np.all(dropped ^ kept)
  assert dropped.any() and kept.any()


def test_convnext_block_drop_path_needs_rng_in_training_only():
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  block = ConvNeXtBlock(drop_path=0.5)
  params = random_params(block, images)
  evaluated = block.apply({'params': params}, images)
  np.testing.assert_array_equal(
      evaluated, ConvNeXtBlock().apply({'params': params}, images, train=True))
  with pytest.raises(Exception, match='dropout'):
    block.apply({'params': params}, images, train=True)


@pytest.mark.parametrize('preset, timm_name', [
    ('atto', 'convnext_atto'), ('tiny', 'convnext_tiny'), ('small', 'convnext_small'),
    ('base', 'convnext_base')])
def test_convnext_preset_matches_timm_parameter_count(preset, timm_name):
  registry = json.loads((FIXTURES / 'timm_registry_shapes.json').read_text())['models']
  shapes = jax.eval_shape(ConvNeXt(**convnext_config(preset)).init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  timm_count = sum(int(np.prod(s)) for k, s in registry[timm_name]['state_dict'].items()
                   if not k.startswith('head.fc.'))
  assert ours == timm_count


def test_convnext_config_rejects_unknown_preset():
  with pytest.raises(ValueError, match="Unknown ConvNeXt preset 'huge'"):
    convnext_config('huge')
