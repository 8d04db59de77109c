"""Slice preprocessing: resize against jax.image.resize, crops against slicing."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdiqa_jax.data import preprocess


def _slice(shape=(64, 64), seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _flips(window):
  return [window, window[::-1], window[:, ::-1], window[::-1, ::-1]]


def test_prepare_image_keeps_a_slice_of_the_right_size_bit_for_bit():
  image = _slice((32, 32))
  out = preprocess.prepare_image(image[..., None], 32)
  assert out.shape == (32, 32, 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out[..., 0], image)


@pytest.mark.parametrize('shape,size', [((96, 96), 40), ((64, 64), 64 + 17),
                                        ((80, 60), 32)])
def test_prepare_image_matches_jax_antialiased_linear_resize(shape, size):
  image = _slice(shape, seed=1)
  expected = jax.image.resize(jnp.asarray(image), (size, size), 'linear',
                              antialias=True)
  out = preprocess.prepare_image(image, size)
  assert out.shape == (size, size, 1)
  np.testing.assert_allclose(out[..., 0], np.clip(np.asarray(expected), 0, 1),
                             atol=1e-5)


def test_train_crop_only_moves_pixels_and_covers_positions_and_flips():
  image = _slice((40, 40), seed=2)
  side = preprocess.crop_side(40, 40, 0.8)  # 32: the model size, no resampling.
  windows = {(top, left): image[top:top + side, left:left + side]
             for top, left in itertools.product(range(40 - side + 1), repeat=2)}
  seen_positions, seen_flips = set(), set()
  for seed in range(40):
    out = preprocess.train_crop(
        image, image_size=side, crop_fraction=0.8, random_crop=True,
        random_flip=True, rng=np.random.default_rng(seed))[..., 0]
    matches = [(position, flip)
               for position, window in windows.items()
               for flip, candidate in enumerate(_flips(window))
               if np.array_equal(out, candidate)]
    assert matches, f'seed {seed}: output is not a flipped window of the input'
    seen_positions.add(matches[0][0])
    seen_flips.add(matches[0][1])
  assert seen_flips == {0, 1, 2, 3}
  assert len(seen_positions) > 20


def test_train_crop_without_randomness_is_the_single_eval_crop():
  image = _slice((50, 70), seed=3)
  train = preprocess.train_crop(
      image, image_size=24, crop_fraction=0.875, random_crop=False,
      random_flip=False, rng=np.random.default_rng(0))
  evaluation = preprocess.eval_crops(image, image_size=24, crop_fraction=0.875,
                                     num_crops=1)
  np.testing.assert_array_equal(train, evaluation[0])


def test_five_eval_crops_are_the_corners_then_the_centre():
  image = _slice((50, 70), seed=4)
  side = 44  # round(0.875 * 50)
  crops = preprocess.eval_crops(image, image_size=side, crop_fraction=0.875,
                                num_crops=5)
  assert crops.shape == (5, side, side, 1)
  expected = [image[:side, :side], image[:side, -side:], image[-side:, :side],
              image[-side:, -side:], image[3:3 + side, 13:13 + side]]
  for crop, window in zip(crops, expected):
    np.testing.assert_array_equal(crop[..., 0], window)


@pytest.mark.parametrize('image,message', [
    (np.zeros((4, 8, 8), np.float32), r'shape \(H, W\) or \(H, W, 1\)'),
    (np.full((8, 8), 120.0, np.float32), 'windowed to'),
    (np.full((8, 8), np.nan, np.float32), 'windowed to'),
])
def test_bad_slices_are_rejected(image, message):
  with pytest.raises(ValueError, match=message):
    preprocess.prepare_image(image, 8)


def test_eval_crops_rejects_unsupported_crop_counts():
  with pytest.raises(ValueError, match='1 .centre. or 5'):
    preprocess.eval_crops(_slice(), image_size=8, crop_fraction=0.5, num_crops=3)
