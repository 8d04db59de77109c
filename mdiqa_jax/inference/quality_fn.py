"""CT quality as a pure, differentiable JAX function of HU images.

`make_quality_fn(model, preprocessing)` returns

  quality_fn(params, hu_images, pixel_mm) -> scores

with hu_images (N, H, W) (or (H, W)) in Hounsfield units and pixel_mm a Python
float (static: it fixes the resampled shape), scores (N,) float32 on the
model's 0..4 scale. It follows `inference.scoring` step by step (window, spacing
rule, native tiles, patch weights x body fraction, pooled score
distributions), with the three steps that are piecewise constant there made
smooth so that d score / d image is defined and informative everywhere:

  window        clip((HU - floor) / width, 0, 1)   -> `soft_clip`: softplus
                corners of SOFTNESS_HU (a pixel 5 HU outside the window still
                moves the score a little);
  body mask     7 x 7 mean > BODY_THRESHOLD        -> a sigmoid of the same
                mean (transition BODY_SOFTNESS wide);
  tile skipping body fraction < min_body_fraction -> a sigmoid gate on the
                tile's body fraction (TILE_GATE_SOFTNESS wide), every tile of
                the grid is run.

Spacing outside the trained range is resampled with the same band-limited
DCT resampler as `preprocess.fit_spacing` (linear, so differentiable). On
real slices the score differs from `Scorer.score` (the exact, hard-edged
path) by about 1e-3 (tests/quality_fn_test.py); use `Scorer.score` to report
a scan's quality and this function to optimise or compare images in JAX.

Everything is jnp: `jax.jit(quality_fn, static_argnums=2)`, `jax.grad` with
respect to the images (e.g. a perceptual loss for a denoiser) and `jax.vmap`
all work.
"""
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mdiqa_jax.data import preprocess

QualityFn = Callable[[Any, jax.Array, float], jax.Array]

# Width (HU) of the rounded corners of the smooth window.
SOFTNESS_HU = 5.0
# Width (window units) of the sigmoid that replaces the body threshold.
BODY_SOFTNESS = 0.002
# Width (body fraction) of the sigmoid that replaces tile skipping.
TILE_GATE_SOFTNESS = 0.01


def soft_clip(x: jax.Array, sharpness: float) -> jax.Array:
  """A smooth clip(x, 0, 1): x - softplus(s(x - 1)) / s + softplus(-s x) / s.

  Equals the hard clip to within log(2) / s at the corners and exponentially
  closely away from them; its derivative is a smooth step from 0 to 1 to 0.
  """
  return (x - jax.nn.softplus(sharpness * (x - 1.0)) / sharpness
          + jax.nn.softplus(-sharpness * x) / sharpness)


def _resample(images: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """(N, H, W) -> (N, h, w): `preprocess.resample_band_limited`, in jnp."""
  spectrum = jax.scipy.fft.dctn(images, type=2, axes=(1, 2), norm='ortho')
  rows, cols = min(shape[0], images.shape[1]), min(shape[1], images.shape[2])
  fitted = jnp.zeros((images.shape[0],) + tuple(shape), images.dtype)
  fitted = fitted.at[:, :rows, :cols].set(spectrum[:, :rows, :cols])
  gain = math.sqrt(shape[0] * shape[1] / (images.shape[1] * images.shape[2]))
  return jax.scipy.fft.idctn(fitted, type=2, axes=(1, 2), norm='ortho') * gain


def _smooth_body(images: jax.Array) -> jax.Array:
  """(N, H, W) in [0, 1] -> (N, H, W) soft body mask (`preprocess.body_mask`)."""
  size = preprocess.BODY_FILTER_PIXELS
  pad = size // 2
  mean = jax.lax.reduce_window(
      images, 0.0, jax.lax.add, (1, size, size), (1, 1, 1),
      [(0, 0), (pad, size - 1 - pad), (pad, size - 1 - pad)]) / (size * size)
  return jax.nn.sigmoid((mean - preprocess.BODY_THRESHOLD) / BODY_SOFTNESS)


def make_quality_fn(model, preprocessing) -> QualityFn:
  """The model's score as a differentiable function (module docstring).

  Args:
    model: the flax module (`models.create_model(config)`).
    preprocessing: `inference.preprocessing.Preprocessing` of the run.

  Returns:
    quality_fn(params, hu_images, pixel_mm) -> (N,) scores ((), for one
    (H, W) image). pixel_mm must be a Python number (static under jit).
  """
  tile, patch = preprocessing.tile_size, preprocessing.patch_size
  floor = preprocessing.window_level - preprocessing.window_width / 2
  sharpness = preprocessing.window_width / SOFTNESS_HU
  centers = jnp.asarray(preprocessing.bin_centers, jnp.float32)

  def quality_fn(params, hu_images, pixel_mm):
    hu_images = jnp.asarray(hu_images, jnp.float32)
    single = hu_images.ndim == 2
    if single:
      hu_images = hu_images[None]
    if hu_images.ndim != 3:
      raise ValueError(f'quality_fn: expected (H, W) or (N, H, W) HU images, got shape '
                       f'{hu_images.shape}.')
    if not (isinstance(pixel_mm, (int, float)) and pixel_mm > 0):
      raise ValueError(f'quality_fn: pixel_mm must be a positive Python number (static '
                       f'under jit), got {pixel_mm!r}.')
    images = soft_clip((hu_images - floor) / preprocessing.window_width, sharpness)
    shape = preprocess.fitted_shape(hu_images.shape[1:], (float(pixel_mm),) * 2,
                                    preprocessing.pixel_mm_range)
    if shape is None:
      shape = hu_images.shape[1:]
    else:
      images = jnp.clip(_resample(images, shape), 0.0, 1.0)
    height, width = max(shape[0], tile), max(shape[1], tile)
    images = jnp.pad(images, ((0, 0), (0, height - shape[0]), (0, width - shape[1])))
    body = _smooth_body(images)
    origins = [(top, left) for top in preprocess.tile_origins(height, tile)
               for left in preprocess.tile_origins(width, tile)]
    tiles = jnp.stack([images[:, t:t + tile, l:l + tile] for t, l in origins], axis=1)
    grid = tile // patch
    patch_body = jnp.stack([
        body[:, t:t + tile, l:l + tile].reshape(-1, grid, patch, grid, patch).mean(axis=(2, 4))
        for t, l in origins], axis=1)                                  # (N, T, g, g)
    gate = jax.nn.sigmoid((patch_body.mean(axis=(2, 3), keepdims=True)
                           - preprocessing.min_body_fraction) / TILE_GATE_SOFTNESS)
    num_slices, num_tiles = tiles.shape[:2]
    outputs = model.apply({'params': params},
                          tiles.reshape((num_slices * num_tiles, tile, tile, 1)), train=False)
    unflatten = lambda x: x.reshape((num_slices, num_tiles) + x.shape[1:])
    weights = unflatten(outputs['patch_weights']) * patch_body * gate
    weights = weights / jnp.maximum(weights.sum(axis=(1, 2, 3), keepdims=True), 1e-12)
    if 'patch_log_probs' in outputs:
      probs = jnp.einsum('nthw,nthwkb->nkb', weights,
                         jnp.exp(unflatten(outputs['patch_log_probs'])))
      scores = probs.mean(axis=1) @ centers
    else:
      scores = jnp.sum(weights * unflatten(outputs['patch_scores']), axis=(1, 2, 3))
    return scores[0] if single else scores

  return quality_fn

