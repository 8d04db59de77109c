"""ViT backbone: shapes under jit, gradients, and parity with timm's VisionTransformer.

The timm outputs come from tests/fixtures/ (written by make_timm_fixtures.py
with torch + timm); CI reads them without torch.
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax.convert import vit as convert_vit
from mdiqa_jax.models.vit import ViT, query_chunked_attention, softmax_attention, vit_config

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
# The fixture model: timm VisionTransformer(img_size=32, patch_size=8,
# embed_dim=32, depth=2, num_heads=2, num_classes=0).
FIXTURE_VIT = dict(patch_size=8, width=32, depth=2, num_heads=2, feature_blocks=(0, 1))


def random_params(module, images, seed=0):
  """Seeded N(0, 0.1) params of the module's init shapes.

  Avoids compiling the initializers (slow on a busy 2-core CPU); shapes come
  from the module's own init via jax.eval_shape.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(np.float32), shapes)


def timm_block_grid(reference, key, grid):
  """A timm block output (B, 1 + N, D) as our (B, grid, grid, D) patch grid."""
  tokens = reference[key]
  return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, tokens.shape[-1])


def test_vit_tiny_cpu_shapes_under_jit_and_finite_gradients():
  model = ViT(**vit_config('tiny_cpu'))
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
  params = random_params(model, images)

  def loss(p):
    out = model.apply({'params': p}, images)
    value = sum(jnp.mean(f ** 2) for f in out['features']) + jnp.mean(out['pre_logits'] ** 2)
    return value, out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert [f.shape for f in out['features']] == [(2, 4, 4, 64)] * 3
  assert out['pre_logits'].shape == (2, 64)
  assert out['tokens'].shape == (2, 17, 64)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(params))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads['pos_embedding']).sum()) > 0
  assert float(jnp.abs(grads['embedding']['kernel']).sum()) > 0


@pytest.fixture(scope='module')
def timm_loaded():
  reference = np.load(FIXTURES / 'vit_timm_outputs.npz')
  model = ViT(**FIXTURE_VIT)
  init = jax.eval_shape(model.init, jax.random.key(0), reference['input'])['params']
  params, _ = convert_vit.load(init, FIXTURES / 'vit_timm.safetensors')
  return model, params, reference


def test_vit_matches_timm_every_block_tokens_and_pre_logits(timm_loaded):
  model, params, reference = timm_loaded
  out = jax.jit(model.apply)({'params': params}, reference['input'])
  for block in (0, 1):
    np.testing.assert_allclose(out['features'][block],
                               timm_block_grid(reference, f'block_{block}', 4),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['tokens'], reference['tokens'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['pre_logits'], reference['pre_logits'], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('chunk', [64, 16, 7])
def test_query_chunked_attention_equals_flax_dot_product_attention(chunk):
  # 37 queries: one block; 3 blocks of 13, 13, 11; 6 blocks of 7 (the last 2).
  rng = np.random.default_rng(0)
  query, key, value = (jnp.asarray(rng.normal(size=(2, 37, 3, 8)), jnp.float32)
                       for _ in range(3))
  ours = lambda q, k, v: query_chunked_attention(q, k, v, chunk=chunk)
  out, our_vjp = jax.vjp(ours, query, key, value)
  expected, reference_vjp = jax.vjp(nn.dot_product_attention, query, key, value)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for ours_gradient, expected_gradient in zip(our_vjp(cotangent), reference_vjp(cotangent)):
    np.testing.assert_allclose(ours_gradient, expected_gradient, rtol=1e-5, atol=1e-5)


def test_softmax_attention_stays_finite_where_exp_of_the_logits_overflows():
  # Logits near +-1e3: exp() overflows float32 unless the row maximum is taken off.
  rng = np.random.default_rng(1)
  query = jnp.asarray(30 * rng.normal(size=(1, 9, 2, 4)), jnp.float32)
  key = jnp.asarray(30 * rng.normal(size=(1, 11, 2, 4)), jnp.float32)
  value = jnp.asarray(rng.normal(size=(1, 11, 2, 4)), jnp.float32)
  out, our_vjp = jax.vjp(softmax_attention, query, key, value)
  expected, reference_vjp = jax.vjp(nn.dot_product_attention, query, key, value)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  cotangent = jnp.ones_like(out)
  for ours_gradient, expected_gradient in zip(our_vjp(cotangent), reference_vjp(cotangent)):
    np.testing.assert_allclose(ours_gradient, expected_gradient, rtol=1e-4, atol=1e-4)


def test_vit_with_attention_chunks_and_remat_matches_timm_and_its_gradients(timm_loaded):
  model, params, reference = timm_loaded
  chunked = ViT(**FIXTURE_VIT, attention_query_chunk=5, remat=True)  # 17 tokens: 4 blocks.
  out = jax.jit(chunked.apply)({'params': params}, reference['input'])
  np.testing.assert_allclose(out['tokens'], reference['tokens'], rtol=1e-5, atol=1e-5)

  def gradient(module):
    loss = lambda p: jnp.sum(module.apply({'params': p}, reference['input'])['tokens'] ** 2)
    return jax.jit(jax.grad(loss))(params)

  for ours, expected in zip(jax.tree.leaves(gradient(chunked)),
                            jax.tree.leaves(gradient(model))):
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_vit_features_follow_feature_blocks_order(timm_loaded):
  _, params, reference = timm_loaded
  model = ViT(**{**FIXTURE_VIT, 'feature_blocks': (1, 0)})
  out = model.apply({'params': params}, reference['input'])
  np.testing.assert_allclose(out['features'][0], timm_block_grid(reference, 'block_1', 4),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['features'][1], timm_block_grid(reference, 'block_0', 4),
                             rtol=1e-5, atol=1e-5)


def test_vit_rejects_out_of_range_feature_blocks_and_ragged_inputs():
  images = jnp.zeros((1, 32, 32, 1))
  with pytest.raises(ValueError, match=r'feature_blocks.*\[2\].*depth=2'):
    jax.eval_shape(ViT(**{**FIXTURE_VIT, 'feature_blocks': (0, 2)}).init, jax.random.key(0),
                   images)
  with pytest.raises(ValueError, match='not a multiple of patch_size=8'):
    jax.eval_shape(ViT(**FIXTURE_VIT).init, jax.random.key(0), jnp.zeros((1, 36, 32, 1)))


def test_vit_dropout_is_active_only_in_training():
  model = ViT(**{**FIXTURE_VIT, 'dropout': 0.5})
  images = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
  params = random_params(model, images)
  apply = jax.jit(model.apply, static_argnames='train')
  evaluated = apply({'params': params}, images)['pre_logits']
  again = apply({'params': params}, images)['pre_logits']
  trained = apply({'params': params}, images, train=True,
                  rngs={'dropout': jax.random.key(2)})['pre_logits']
  np.testing.assert_array_equal(evaluated, again)
  assert float(jnp.abs(trained - evaluated).max()) > 1e-3


def test_vit_without_class_token_pools_the_normed_tokens():
  model = ViT(**{**FIXTURE_VIT, 'use_class_token': False})
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = random_params(model, images)
  out = model.apply({'params': params}, images)
  assert 'cls' not in params
  assert out['tokens'].shape == (2, 16, 32)
  np.testing.assert_allclose(out['pre_logits'], out['tokens'].mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize('preset, timm_name', [
    ('ti/16', 'vit_tiny_patch16_224'), ('s/16', 'vit_small_patch16_224'),
    ('b/16', 'vit_base_patch16_224'), ('b/8', 'vit_base_patch8_224')])
def test_vit_preset_matches_timm_parameter_count_and_heads(preset, timm_name):
  registry = json.loads((FIXTURES / 'timm_registry_shapes.json').read_text())['models']
  timm_model = registry[timm_name]
  kwargs = vit_config(preset)
  shapes = jax.eval_shape(ViT(**kwargs).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  timm_count = sum(int(np.prod(s)) for k, s in timm_model['state_dict'].items()
                   if not k.startswith('head.'))
  # timm keeps a position row for the class token; ViT folds it into `cls`.
  assert ours == timm_count - kwargs['width']
  assert kwargs['num_heads'] == timm_model['num_heads']


def test_vit_config_rejects_unknown_preset():
  with pytest.raises(ValueError, match="Unknown ViT preset 'h/14'"):
    vit_config('h/14')
