"""Native-pixel preprocessing: tiles against slicing, body mask and pooling weights
against loops, spacing resampling against analytic band-limited fields."""
import itertools
import math

import numpy as np
import pytest

from mdiqa_jax.data import preprocess


def _slice(shape=(64, 64), seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _body_slice(shape=(100, 90), seed=0):
  """A disk of soft tissue (with noise) in air, windowed to [0, 1]."""
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  inside = ((rows - shape[0] / 2) / (0.35 * shape[0]))**2 + (
      (cols - shape[1] / 2) / (0.35 * shape[1]))**2 < 1
  noise = np.random.default_rng(seed).normal(0.0, 0.05, shape)
  return np.where(inside, np.clip(0.5 + noise, 0, 1), 0.0).astype(np.float32)


def _flips(window):
  return [window, window[::-1], window[:, ::-1], window[::-1, ::-1]]


def _reference_body_mask(image):
  """7 x 7 mean with zero padding, one pixel at a time."""
  padded = np.pad(image.astype(np.float64), 3)
  height, width = image.shape
  mean = np.array([[padded[i:i + 7, j:j + 7].mean() for j in range(width)]
                   for i in range(height)])
  return mean > preprocess.BODY_THRESHOLD


def test_body_mask_is_the_thresholded_7x7_mean():
  image = _body_slice((40, 36), seed=1)
  np.testing.assert_array_equal(preprocess.body_mask(image), _reference_body_mask(image))
  assert preprocess.body_mask(image).any() and not preprocess.body_mask(image).all()


def test_uint8_slices_are_read_as_the_window_over_255():
  stored = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.as_slice(stored),
                                stored[..., 0].astype(np.float32) / np.float32(255))


def test_train_crop_only_copies_native_pixels_and_covers_positions_and_flips():
  image = _slice((40, 40), seed=2)
  side = 32
  windows = {(top, left): image[top:top + side, left:left + side]
             for top, left in itertools.product(range(40 - side + 1), repeat=2)}
  seen_positions, seen_flips = set(), set()
  for seed in range(40):
    out = preprocess.train_crop(image, image_size=side, min_body_fraction=0.0,
                                random_flip=True, rng=np.random.default_rng(seed))[..., 0]
    matches = [(position, flip) for position, window in windows.items()
               for flip, candidate in enumerate(_flips(window))
               if np.array_equal(out, candidate)]
    assert matches, f'seed {seed}: output is not a flipped window of the input'
    seen_positions.add(matches[0][0])
    seen_flips.add(matches[0][1])
  assert seen_flips == {0, 1, 2, 3}
  assert len(seen_positions) > 20


def test_train_crop_prefers_tiles_inside_the_body():
  # Body only in the bottom-right 40 x 40 corner of a 120 x 120 slice.
  image = np.zeros((120, 120), np.float32)
  image[80:, 80:] = 0.5
  uniform_body, preferred_body = [], []
  for seed in range(30):
    for fraction, found in ((0.0, uniform_body), (0.5, preferred_body)):
      tile = preprocess.train_crop(image, image_size=32, min_body_fraction=fraction,
                                   random_flip=False, rng=np.random.default_rng(seed))
      found.append(float((tile > 0).mean()))
  assert np.mean(preferred_body) > np.mean(uniform_body) + 0.2


def test_train_crop_refuses_slices_smaller_than_the_tile():
  with pytest.raises(ValueError, match='smaller than the 64-pixel'):
    preprocess.train_crop(_slice((40, 80)), image_size=64, min_body_fraction=0.0,
                          random_flip=False, rng=np.random.default_rng(0))


@pytest.mark.parametrize('length,tile', [(512, 96), (96, 96), (100, 96), (60, 96), (448, 448),
                                         (512, 448)])
def test_tile_origins_cover_the_axis_evenly(length, tile):
  origins = preprocess.tile_origins(length, tile)
  covered = np.zeros(max(length, tile), bool)
  for origin in origins:
    covered[origin:origin + tile] = True
  assert covered[:length].all()
  assert origins[0] == 0 and origins[-1] == max(length - tile, 0)
  assert len(origins) == max(1, math.ceil(length / tile))


def test_cut_tiles_are_slices_with_their_patch_body_fractions():
  image = _body_slice((100, 90), seed=3)
  tiles = preprocess.cut_tiles(image, tile_size=32, patch_size=8, min_body_fraction=0.0)
  body = _reference_body_mask(image).astype(np.float64)
  assert tiles.body_found and len(tiles.images) == 4 * 3
  for tile, (top, left), patch_body in zip(tiles.images, tiles.origins, tiles.patch_body):
    np.testing.assert_array_equal(tile[..., 0], image[top:top + 32, left:left + 32])
    for i, j in itertools.product(range(4), repeat=2):
      expected = body[top + 8 * i:top + 8 * i + 8, left + 8 * j:left + 8 * j + 8].mean()
      assert patch_body[i, j] == pytest.approx(expected, abs=1e-6)


def test_cut_tiles_skip_background_and_keep_everything_without_a_body():
  image = np.zeros((96, 96), np.float32)
  image[:32, :32] = 0.5
  tiles = preprocess.cut_tiles(image, tile_size=32, patch_size=8, min_body_fraction=0.05)
  assert tiles.body_found
  # The body (3 px blurred by the mask's 7 x 7 mean) reaches the tiles at (0, 32)
  # and (32, 0) but not those further away.
  assert {tuple(o) for o in tiles.origins} <= {(0, 0), (0, 32), (32, 0), (32, 32)}
  assert (0, 0) in {tuple(o) for o in tiles.origins}
  empty = preprocess.cut_tiles(np.zeros((64, 64), np.float32), tile_size=32, patch_size=8,
                               min_body_fraction=0.05)
  assert not empty.body_found and len(empty.images) == 4
  np.testing.assert_array_equal(empty.patch_body, 1.0)


def test_cut_tiles_pad_short_sides_with_air():
  image = _body_slice((40, 24), seed=4)
  tiles = preprocess.cut_tiles(image, tile_size=32, patch_size=8, min_body_fraction=0.0)
  assert tiles.images.shape[1:] == (32, 32, 1)
  np.testing.assert_array_equal(tiles.images[0, :32, :24, 0], image[:32])
  np.testing.assert_array_equal(tiles.images[0, :, 24:, 0], 0.0)


def test_fit_spacing_leaves_slices_in_range_untouched():
  image = _slice((50, 40), seed=5)
  for spacing in ((0.6, 0.6), (0.75, 0.8), (0.95, 0.95)):
    out, scored, note = preprocess.fit_spacing(image, spacing, (0.6, 0.95))
    assert out is image and scored == spacing and note is None


def _cosine_field(positions_rows, positions_cols, length_rows, length_cols):
  """A smooth field written as a few half-wave cosines over a fixed field of view,
  evaluated at given pixel-centre positions (in units of the field)."""
  field = np.zeros((len(positions_rows), len(positions_cols)))
  for k, l, amplitude in ((0, 0, 0.5), (3, 1, 0.1), (1, 7, -0.08), (11, 5, 0.05)):
    field += amplitude * np.outer(np.cos(math.pi * k * positions_rows),
                                  np.cos(math.pi * l * positions_cols))
  return field


@pytest.mark.parametrize('spacing,target', [((0.5, 0.5), 0.6), ((1.2, 1.2), 0.95),
                                            ((0.5, 1.2), None)])
def test_fit_spacing_resamples_to_the_nearest_end_exactly_for_band_limited_slices(
    spacing, target):
  """Cosines of the field of view below both grids' band limit are reproduced
  on the new pixel centres (the analytic function, not the code, is the reference)."""
  size = (90, 80)
  centres = lambda n: (np.arange(n) + 0.5) / n
  image = _cosine_field(centres(size[0]), centres(size[1]), *size).astype(np.float32)
  out, scored, note = preprocess.fit_spacing(image, spacing, (0.6, 0.95))
  targets = [min(max(s, 0.6), 0.95) for s in spacing]
  shape = tuple(round(n * s / t) for n, s, t in zip(size, spacing, targets))
  assert out.shape == shape
  assert scored == pytest.approx(tuple(n * s / m for n, s, m in zip(size, spacing, shape)))
  assert 'resampled from' in note and '0.6-0.95 mm' in note
  expected = _cosine_field(centres(shape[0]), centres(shape[1]), *shape)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fit_spacing_keeps_the_noise_a_reader_sees():
  """Ramp-filtered (FBP-like) noise moved from 0.39 to 0.40 mm keeps >= 90 % of its
  per-pixel std (bilinear interpolation keeps about half: it reads as a lower dose)."""
  rng = np.random.default_rng(7)
  frequencies = np.fft.fftfreq(256)
  ramp = np.hypot(frequencies[:, None], frequencies[None, :])
  noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(256, 256))) * ramp))
  image = (0.5 + 0.05 * noise / noise.std()).astype(np.float32)
  out, _, note = preprocess.fit_spacing(image, (0.39, 0.39), (0.4, 0.95))
  assert note and out.shape == (250, 250)
  inner = out[16:-16, 16:-16]
  assert 0.9 <= inner.std() / 0.05 <= 1.0
  assert abs(inner.mean() - 0.5) < 1e-3


def test_fit_spacing_rejects_bad_spacings_and_ranges():
  with pytest.raises(ValueError, match='positive and finite'):
    preprocess.fit_spacing(_slice(), (0.0, 0.7), (0.6, 0.95))
  with pytest.raises(ValueError, match='pixel_mm_range'):
    preprocess.fit_spacing(_slice(), (0.7, 0.7), (0.9, 0.6))
