"""Components chosen by name: a loss, a head and LR multipliers added from outside the package.

The toy loss and toy head below are registered by this file only; the
training code reaches them through `config.loss.name` / `config.model.head.name`
strings, with no edit to any dispatch code.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mdiqa_jax import config_validation
from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import train_step
from mdiqa_jax.models import head as head_lib
from mdiqa_jax.registry import Registry

import tiny_train_config


@losses.LOSSES.register('toy_scaled_squared_error')
def toy_scaled_squared_error(*, bin_centers, scale: float):
  """scale * (score - label)^2: a loss with an argument of its own."""
  del bin_centers

  def loss_fn(outputs, batch):
    loss = scale * jnp.square(outputs['score'] - batch['score'])
    return loss, {'toy_loss': loss}
  return loss_fn


class ToyMeanHead(nn.Module):
  """Each patch predicts a score; the image score is the plain patch mean."""
  hidden: int
  offset: float

  @nn.compact
  def __call__(self, features, *, train=False):
    del train
    patch_scores = nn.Dense(1, name='score')(features)[..., 0] + self.offset   # (B, h, w)
    score = patch_scores.mean(axis=(1, 2))
    return {'score': score, 'uncertainty': jnp.zeros_like(score),
            'scale_scores': score[:, None], 'patch_scores': patch_scores,
            'patch_weights': jnp.ones_like(patch_scores)}


@head_lib.HEADS.register('toy_mean')
def toy_mean_head(*, hidden, score_min, score_max, bin_width, dtype, offset: float = 0.0):
  del score_min, score_max, bin_width, dtype
  return ToyMeanHead(hidden=hidden, offset=offset)


class ToyBrokenHead(ToyMeanHead):
  """Breaks the output contract: no patch weights."""

  def __call__(self, features, *, train=False):
    outputs = super().__call__(features, train=train)
    del outputs['patch_weights']
    return outputs


@head_lib.HEADS.register('toy_broken')
def toy_broken_head(*, hidden, score_min, score_max, bin_width, dtype):
  del score_min, score_max, bin_width, dtype
  return ToyBrokenHead(hidden=hidden, offset=0.0)


def _toy_config():
  config = tiny_train_config.get_config()
  config.model.head.name = 'toy_mean'
  config.model.head.kwargs = ml_collections.ConfigDict({'offset': 2.0})
  config.loss.name = 'toy_scaled_squared_error'
  config.loss.kwargs = ml_collections.ConfigDict({'scale': 0.5})
  return config


def test_a_toy_loss_and_head_registered_here_train_two_steps_from_config_strings():
  config = _toy_config()
  config_validation.validate_config(config)  # Names, head contract, loss on its outputs.
  model = models.create_model(config)
  assert isinstance(model.head, ToyMeanHead) and model.head.offset == 2.0
  params = train_step.init_params(model, jax.random.PRNGKey(0), tiny_train_config.IMAGE_SIZE)
  tx, learning_rate_fn = optim.create_optimizer(config.optim, params, total_steps=2)
  parallel = train_step.DataParallel(
      train_step.make_train_step(config, model, losses.make_loss_fn(config), tx,
                                 learning_rate_fn), config.parallel)
  rng = np.random.default_rng(0)
  host_batch = {'image': rng.uniform(size=(8, 32, 32, 1)).astype(np.float32),
                'score': rng.uniform(0, 4, 8).astype(np.float32)}
  # The first step's loss is the toy loss of the initial model, computed here in
  # numpy (before the step donates the parameters).
  outputs = model.apply({'params': params}, host_batch['image'])
  want = np.mean(0.5 * (np.asarray(outputs['score'], np.float64) - host_batch['score'])**2)
  state = parallel.replicate(
      train_step.create_train_state(params, tx, jax.random.PRNGKey(1), use_ema=False))
  step_losses = []
  for _ in range(2):
    state, metrics = parallel.step(state, parallel.shard_batch(host_batch))
    step_losses.append(parallel.fetch(metrics))
  np.testing.assert_allclose(step_losses[0]['loss'], want, rtol=1e-5)
  np.testing.assert_allclose(step_losses[0]['toy_loss'], want, rtol=1e-5)
  assert int(parallel.fetch(state.step)) == 2
  assert np.isfinite(step_losses[1]['loss']) and step_losses[1]['loss'] != step_losses[0]['loss']


def test_a_head_that_breaks_the_output_contract_is_refused_by_validation():
  config = _toy_config()
  config.model.head.name = 'toy_broken'
  config.model.head.kwargs = ml_collections.ConfigDict()
  with pytest.raises(config_validation.ConfigError,
                     match=r"config.model.head.name='toy_broken': head outputs: missing "
                           r"\['patch_weights'\]"):
    config_validation.validate_config(config)


def test_check_outputs_names_a_wrong_shape():
  outputs = {'score': np.zeros(2), 'uncertainty': np.zeros(2), 'scale_scores': np.zeros((2, 3)),
             'patch_scores': np.zeros((2, 4, 4)), 'patch_weights': np.zeros((2, 4, 5))}
  with pytest.raises(ValueError, match=r'patch_weights \(2, 4, 5\) \(expected \(2, 4, 4\)\)'):
    head_lib.check_outputs(outputs, 2, (4, 4), 21)


def test_registry_refuses_a_name_twice_and_names_the_field_of_an_unknown_one():
  registry = Registry('widget', 'config.widget.name')
  registry.register('a')(object)
  with pytest.raises(ValueError, match="widget 'a' is registered twice"):
    registry.register('a')(object)
  with pytest.raises(ValueError, match=r"config.widget.name='b': no such widget; "
                                       r"registered: \['a'\]"):
    registry.get('b')


def _sgd_update(lr_multipliers: Any, grads: Any, params: Any) -> Any:
  config = ml_collections.ConfigDict({
      'name': 'sgd', 'kwargs': {}, 'learning_rate': 0.5, 'lr_multipliers': lr_multipliers,
      'warmup_steps': 0, 'schedule': 'constant', 'grad_clip_norm': 0.0})
  tx, _ = optim.create_optimizer(config, params, total_steps=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_lr_multipliers_scale_the_update_of_the_parameters_their_regex_matches():
  params = {'vit': {'cls': np.ones(3, np.float32)}, 'convnext': {'stem': np.ones(2, np.float32)},
            'head': {'out': np.ones(4, np.float32)}}
  grads = jax.tree_util.tree_map(lambda x: np.full_like(x, 2.0), params)
  updates = _sgd_update((('^vit/', 0.1), ('^(vit|convnext)/', 0.0)), grads, params)
  # SGD: update = -learning_rate * multiplier * gradient; the first match wins.
  np.testing.assert_allclose(updates['vit']['cls'], -0.5 * 0.1 * 2.0, rtol=1e-7)
  np.testing.assert_array_equal(updates['convnext']['stem'], 0.0)
  np.testing.assert_allclose(updates['head']['out'], -0.5 * 2.0, rtol=1e-7)
  unscaled = _sgd_update((), grads, params)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: np.array_equal(a, b), unscaled, optax.sgd(0.5).update(
          grads, optax.sgd(0.5).init(params))[0]))
