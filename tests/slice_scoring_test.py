"""Whole-slice scoring: pooling against loops and against the model's own head,
independence of the batch size, order of the stream."""
import jax
import numpy as np
import pytest

from mdiqa_jax import models
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference import tiles
from mdiqa_jax.inference.preprocessing import Preprocessing
from mdiqa_jax.data import preprocess

CENTERS = np.arange(21) * 0.2


def _reference_pool(weights, body, patch_log_probs):
  """Patch by patch: the weighted mixture of K-head distributions over all tiles."""
  num_heads, num_bins = patch_log_probs.shape[-2:]
  pooled, total = np.zeros((num_heads, num_bins)), 0.0
  for t in range(weights.shape[0]):
    for i in range(weights.shape[1]):
      for j in range(weights.shape[2]):
        w = weights[t, i, j] * body[t, i, j]
        pooled += w * np.exp(patch_log_probs[t, i, j].astype(np.float64))
        total += w
  pooled /= total
  mixture = pooled.mean(axis=0)
  mean = sum(p * c for p, c in zip(mixture, CENTERS))
  second = sum(p * c * c for p, c in zip(mixture, CENTERS))
  return pooled, mean, np.sqrt(second - mean**2)


def test_combine_tiles_is_the_weighted_mixture_over_every_patch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 2, 3, 21))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  weights, body = rng.uniform(0.1, 2.0, (3, 2, 2)), rng.uniform(0, 1, (3, 2, 2))
  combined = tiles.combine_tiles(
      {'patch_weights': weights, 'patch_scores': np.zeros((3, 2, 2)),
       'patch_log_probs': log_probs}, body, CENTERS)
  pooled, mean, std = _reference_pool(weights, body, log_probs)
  assert combined['score'] == pytest.approx(mean, abs=1e-9)
  assert combined['uncertainty'] == pytest.approx(std, abs=1e-9)
  np.testing.assert_allclose(combined['scale_scores'], pooled @ CENTERS, atol=1e-6)
  np.testing.assert_allclose(np.exp(combined['log_probs']), pooled, atol=1e-6)


def test_combine_tiles_of_a_point_head_is_the_weighted_mean():
  rng = np.random.default_rng(1)
  scores, weights, body = (rng.uniform(0, 4, (2, 3, 3)), rng.uniform(0.1, 1, (2, 3, 3)),
                           rng.uniform(0, 1, (2, 3, 3)))
  combined = tiles.combine_tiles(
      {'patch_weights': weights, 'patch_scores': scores}, body, CENTERS)
  expected = sum(w * b * s for w, b, s in zip(weights.ravel(), body.ravel(), scores.ravel())
                 ) / sum(w * b for w, b in zip(weights.ravel(), body.ravel()))
  assert combined['score'] == pytest.approx(expected, abs=1e-9)
  assert combined['uncertainty'] == 0.0 and combined['scale_scores'].shape == (1,)


def _body_everywhere(shape, seed):
  """Soft tissue with noise filling the whole image (every patch is body)."""
  noise = np.random.default_rng(seed).normal(0.0, 0.08, shape)
  return np.clip(0.5 + noise, 0.05, 1.0).astype(np.float32)


def _tissue_in_air(shape, seed):
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  inside = ((rows - shape[0] / 2) / (0.4 * shape[0]))**2 + (
      (cols - shape[1] / 2) / (0.45 * shape[1]))**2 < 1
  return np.where(inside, _body_everywhere(shape, seed), 0.0).astype(np.float32)


def _score(checkpoint, images, tile_batch, spacing=(0.75, 0.75)):
  config = checkpoint.config
  predict_fn = scoring.make_tile_predict_fn(models.create_model(config))
  preprocessing = Preprocessing.from_config(config)
  items = [(index, image, spacing) for index, image in enumerate(images)]
  return list(scoring.score_slices(predict_fn, checkpoint.params, items, preprocessing,
                                         tile_batch=tile_batch))


def test_one_full_body_tile_scores_as_the_model_itself(tiny_checkpoint):
  image = _body_everywhere((64, 64), seed=2)
  (_, prediction), = _score(tiny_checkpoint, [image], tile_batch=4)
  model = models.create_model(tiny_checkpoint.config)
  outputs = jax.device_get(model.apply({'params': tiny_checkpoint.params},
                                       image[None, :, :, None], train=False))
  assert prediction['num_tiles'] == 1 and prediction['notes'] == []
  assert prediction['score'] == pytest.approx(float(outputs['score'][0]), abs=1e-5)
  assert prediction['uncertainty'] == pytest.approx(float(outputs['uncertainty'][0]), abs=1e-5)
  np.testing.assert_allclose(prediction['scale_scores'], outputs['scale_scores'][0], atol=1e-5)
  np.testing.assert_allclose(prediction['log_probs'], outputs['log_probs'][0], atol=1e-4)


def test_a_slice_scores_the_same_at_tile_batch_1_and_7(tiny_checkpoint):
  images = [_tissue_in_air((200, 180), seed=3), _tissue_in_air((150, 170), seed=4)]
  single, seven = (_score(tiny_checkpoint, images, tile_batch=b) for b in (1, 7))
  assert [key for key, _ in single] == [key for key, _ in seven] == [0, 1]
  for (_, one), (_, other) in zip(single, seven):
    assert one['num_tiles'] == other['num_tiles'] > 4
    for key in ('score', 'uncertainty'):
      assert one[key] == pytest.approx(other[key], abs=1e-6)
    np.testing.assert_allclose(one['log_probs'], other['log_probs'], atol=1e-5)


def test_background_tiles_do_not_count(tiny_checkpoint):
  tissue = _body_everywhere((64, 64), seed=5)
  padded = np.zeros((64, 192), np.float32)
  padded[:, :64] = tissue  # The same tissue with two tiles of air beside it.
  (_, alone), (_, with_air) = _score(tiny_checkpoint, [tissue, padded], tile_batch=4)
  # Tile 2 holds only the 3-pixel rim the body mask's 7 x 7 mean adds (under
  # min_body_fraction), tile 3 nothing: neither is scored.
  body = preprocess.body_mask(padded)
  assert body[:, 64:128].mean() == pytest.approx(3 / 64) and not body[:, 128:].any()
  assert with_air['num_tiles'] == 1
  assert with_air['score'] == pytest.approx(alone['score'], abs=1e-6)
