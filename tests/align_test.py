"""Alignment module: identity-at-init and grid pooling against lax/numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax.models.align import DeformableAlign, DeformableAlignment, PlainFusion, to_grid


def test_deformable_align_at_init_is_a_plain_convolution():
  rng = np.random.default_rng(0)
  cnn_map = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
  vit_tokens = jnp.asarray(rng.normal(size=(2, 2, 2, 5)), jnp.float32)
  module = DeformableAlign(width=4, kernel_size=3)
  params = module.init(jax.random.PRNGKey(0), cnn_map, vit_tokens)['params']
  params = {**params, 'bias': jnp.arange(4.0)}  # A non-zero bias, so it is checked too.
  got = module.apply({'params': params}, cnn_map, vit_tokens)
  want = jax.lax.conv_general_dilated(
      cnn_map, params['kernel'], (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias']
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_offsets_are_predicted_from_vit_tokens():
  rng = np.random.default_rng(1)
  cnn_map = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
  module = DeformableAlign(width=4, kernel_size=3)
  tokens = jnp.asarray(rng.normal(size=(1, 2, 2, 3)), jnp.float32)
  params = module.init(jax.random.PRNGKey(0), cnn_map, tokens)['params']
  params['offset']['kernel'] = jnp.asarray(
      rng.normal(size=params['offset']['kernel'].shape), jnp.float32)
  first = module.apply({'params': params}, cnn_map, tokens)
  second = module.apply({'params': params}, cnn_map, tokens + 1.0)
  assert float(jnp.max(jnp.abs(first - second))) > 1e-3


def test_to_grid_average_pools_integer_multiples():
  x = np.random.default_rng(2).normal(size=(2, 8, 12, 3)).astype(np.float32)
  want = x.reshape(2, 2, 4, 3, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(to_grid(jnp.asarray(x), (2, 3)), want, atol=1e-6)
  assert to_grid(jnp.asarray(x), (16, 24)).shape == (2, 16, 24, 3)


@pytest.mark.parametrize('module', [
    DeformableAlignment(num_scales=3, width=4),
    PlainFusion(num_scales=3, width=4),
])
def test_multi_scale_fusion_shapes(module):
  rng = np.random.default_rng(3)
  stages = [jnp.asarray(rng.normal(size=(2, s, s, c)), jnp.float32)
            for s, c in ((16, 4), (8, 8), (4, 16), (2, 32))]
  grid = (4, 4)
  second = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.float32)
  args = (stages, second, grid)
  params = module.init(jax.random.PRNGKey(0), *args)
  assert module.apply(params, *args).shape == (2, 4, 4, 12)


def test_too_many_scales_is_a_clear_error():
  stages = [jnp.zeros((1, 4, 4, 2))]
  with pytest.raises(ValueError, match='num_scales'):
    PlainFusion(num_scales=2, width=2).init(jax.random.PRNGKey(0), stages, None, (2, 2))
