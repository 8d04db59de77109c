"""The composed model: every ablation initialises and runs forward + backward under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax import losses, models
from mdiqa_jax.config_base import base_config

IMAGE_SIZE = 32


def _config(**overrides):
  """The default (tiny CPU) model, shrunk further so that each variant compiles fast."""
  config = base_config()
  config.data.image_size = IMAGE_SIZE
  config.model.vit.patch_size = 8
  config.model.vit.depth = 2
  config.model.vit.feature_blocks = (0, 1)
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


ABLATIONS = {
    'full': {},
    'vit_only': {'model.use_cnn': False, 'model.use_alignment': False},
    'cnn_only': {'model.use_vit': False, 'model.use_alignment': False},
    'no_alignment': {'model.use_alignment': False},
    'single_scale': {'model.head.kwargs': {'num_distributions': 1},
                     'loss.kwargs.sigmas': (0.25,), 'loss.kwargs.scale_weights': (1.0,)},
    'point_l1': {'model.head.name': 'point', 'model.head.kwargs': {}, 'loss.name': 'l1',
                 'loss.kwargs': {}},
}


@pytest.mark.parametrize('name', sorted(ABLATIONS))
def test_forward_and_backward_under_jit(name):
  config = _config(**ABLATIONS[name])
  model = models.create_model(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, IMAGE_SIZE, IMAGE_SIZE, 1)),
                       jnp.float32)
  batch = {'image': images, 'score': jnp.array([1.2, 3.0])}
  loss_fn = losses.make_loss_fn(config)

  @jax.jit
  def init_and_grads(rng):
    variables = model.init({'params': rng}, images)

    def objective(params):
      outputs = model.apply({'params': params}, batch['image'], train=True,
                            rngs={'dropout': jax.random.PRNGKey(1)})
      return jnp.mean(loss_fn(outputs, batch)[0]), outputs
    return variables, jax.value_and_grad(objective, has_aux=True)(variables['params'])

  variables, ((loss, outputs), grads) = init_and_grads(jax.random.PRNGKey(0))
  assert set(variables) == {'params'}
  grid = IMAGE_SIZE // config.model.vit.patch_size
  distribution = config.model.head.name == 'distribution'
  num_scales = len(config.loss.kwargs.sigmas) if distribution else 1
  assert outputs['score'].shape == (2,)
  assert outputs['uncertainty'].shape == (2,)
  assert outputs['scale_scores'].shape == (2, num_scales)
  assert outputs['patch_scores'].shape == (2, grid, grid)
  assert outputs['patch_weights'].shape == (2, grid, grid)
  if distribution:
    assert outputs['log_probs'].shape == (2, num_scales, 21)
    assert np.all(np.asarray(outputs['uncertainty']) > 0)
  assert np.all((np.asarray(outputs['score']) >= 0) | (not distribution))
  assert np.isfinite(float(loss))
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  # The branches that are off hold no parameters.
  assert ('vit' in variables['params']) == config.model.use_vit
  assert ('convnext' in variables['params']) == config.model.use_cnn


def test_param_groups_name_every_parameter_by_its_path():
  config = _config()
  model = models.create_model(config)
  params = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)},
                                             jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1))))['params']
  names = models.param_groups(params)
  assert jax.tree_util.tree_structure(names) == jax.tree_util.tree_structure(params)
  assert names['vit']['cls'] == 'vit/cls'
  assert names['head']['weights']['out']['kernel'] == 'head/weights/out/kernel'


def test_paper_variants_decode_to_the_sizes_the_paper_config_used_to_type():
  config = _config(**{'model.vit.variant': 'B/16', 'model.vit.patch_size': None,
                      'model.vit.depth': None, 'model.vit.feature_blocks': None,
                      'model.convnext.variant': 'tiny'})
  model = models.create_model(config)
  assert (model.vit.patch_size, model.vit.width, model.vit.depth, model.vit.num_heads,
          model.vit.mlp_ratio, tuple(model.vit.feature_blocks)) == (16, 768, 12, 12, 4.0,
                                                                    (3, 7, 11))
  assert (tuple(model.convnext.depths), tuple(model.convnext.widths)) == (
      (3, 3, 9, 3), (96, 192, 384, 768))


@pytest.mark.parametrize('overrides,message', [
    ({'model.use_vit': False, 'model.use_cnn': False}, 'at least one branch'),
    ({'model.use_vit': False}, 'use_alignment=True'),
    ({'model.head.name': 'ordinal'}, "config.model.head.name='ordinal': no such head"),
    ({'model.dtype': 'float64'}, 'dtype'),
])
def test_bad_model_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    models.create_model(_config(**overrides))


def test_wrong_image_shape_is_a_clear_error():
  model = models.create_model(_config())
  with pytest.raises(ValueError, match='multiple of 32'):
    model.init({'params': jax.random.PRNGKey(0)}, jnp.zeros((1, 40, 40, 1)))
  with pytest.raises(ValueError, match=r'\(B, H, W, 1\)'):
    model.init({'params': jax.random.PRNGKey(0)}, jnp.zeros((1, 64, 64, 3)))
