"""quality_fn: the smooth, differentiable score, against the exact scoring path and
against finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
import pytest

from mdiqa_jax import models
from mdiqa_jax.inference import quality_fn as quality_fn_lib
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference.preprocessing import Preprocessing
from mdiqa_jax.data import intensity


def _ct_small():
  """pydicom's CT_small.dcm in HU (128 x 128, 0.66 mm), read with pydicom alone."""
  ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
  return apply_rescale(ds.pixel_array, ds).astype(np.float32), float(ds.PixelSpacing[0])


@pytest.fixture(scope='module')
def tiny(tiny_checkpoint):
  config = tiny_checkpoint.config
  model = models.create_model(config)
  preprocessing = Preprocessing.from_config(config)
  return model, preprocessing, tiny_checkpoint.params


def test_soft_clip_is_the_hard_clip_up_to_its_corners():
  x = np.linspace(-1.0, 2.0, 30001)
  sharpness = 70.0
  soft = np.asarray(quality_fn_lib.soft_clip(jnp.asarray(x), sharpness))
  hard = np.clip(x, 0.0, 1.0)
  assert np.max(np.abs(soft - hard)) <= np.log(2.0) / sharpness + 1e-6
  far = (np.abs(x) > 20 / sharpness) & (np.abs(x - 1) > 20 / sharpness)
  assert np.max(np.abs(soft - hard)[far]) < 1e-6
  slope = np.asarray(jax.vmap(jax.grad(lambda v: quality_fn_lib.soft_clip(v, sharpness)))(
      jnp.asarray(x, jnp.float32)))
  assert np.all(slope >= 0) and np.all(slope <= 1 + 1e-6)
  assert slope[np.argmin(np.abs(x - 0.5))] > 1 - 1e-6 and slope[0] < 1e-6 and slope[-1] < 1e-6


@pytest.mark.parametrize('spacing', [None, 0.3])
def test_quality_fn_agrees_with_the_exact_scoring_path(tiny, spacing):
  """On a real slice, native (0.66 mm) and resampled (taken as 0.3 mm -> 0.4 mm)."""
  model, preprocessing, params = tiny
  hu, pixel_mm = _ct_small()
  pixel_mm = spacing or pixel_mm
  exact = dict(scoring.score_slices(
      scoring.make_tile_predict_fn(model), params,
      [(0, intensity.window_to_unit(hu), (pixel_mm, pixel_mm))], preprocessing,
      tile_batch=4))[0]['score']
  smooth = float(jax.jit(quality_fn_lib.make_quality_fn(model, preprocessing),
                         static_argnums=2)(params, hu, pixel_mm))
  assert abs(smooth - exact) < 5e-3, (smooth, exact)


def test_quality_fn_batches_and_vmaps_under_jit(tiny):
  model, preprocessing, params = tiny
  hu, pixel_mm = _ct_small()
  quality_fn = jax.jit(quality_fn_lib.make_quality_fn(model, preprocessing),
                       static_argnums=2)
  stack = np.stack([hu, hu[::-1], hu + 30.0])
  batched = np.asarray(quality_fn(params, stack, pixel_mm))
  singles = [float(quality_fn(params, image, pixel_mm)) for image in stack]
  assert batched.shape == (3,) and len(set(np.round(batched, 4))) == 3
  np.testing.assert_allclose(singles, batched, atol=1e-5)
  vmapped = jax.jit(jax.vmap(lambda image: quality_fn(params, image, pixel_mm)))(
      jnp.asarray(stack))
  np.testing.assert_allclose(np.asarray(vmapped), batched, atol=1e-5)


def test_quality_fn_gradient_is_finite_nonzero_and_matches_finite_differences(tiny):
  model, preprocessing, params = tiny
  hu, pixel_mm = _ct_small()
  hu = hu[16:112, 16:112]  # 96 x 96: one tile of the tiny model plus padding.
  quality_fn = jax.jit(quality_fn_lib.make_quality_fn(model, preprocessing),
                       static_argnums=2)
  gradient = np.asarray(jax.grad(lambda x: quality_fn(params, x, pixel_mm))(jnp.asarray(hu)))
  assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
  rng = np.random.default_rng(3)
  for _ in range(3):
    direction = rng.normal(size=hu.shape).astype(np.float32)
    analytic = float(np.vdot(gradient, direction))
    step = 2.0  # HU
    plus = float(quality_fn(params, hu + step * direction, pixel_mm))
    minus = float(quality_fn(params, hu - step * direction, pixel_mm))
    numeric = (plus - minus) / (2 * step)
    assert abs(analytic - numeric) <= 0.03 * abs(numeric) + 1e-5, (analytic, numeric)


def test_quality_fn_rejects_bad_shapes_and_spacings(tiny):
  model, preprocessing, params = tiny
  quality_fn = quality_fn_lib.make_quality_fn(model, preprocessing)
  with pytest.raises(ValueError, match='shape'):
    quality_fn(params, np.zeros((2, 2, 64, 64)), 0.7)
  with pytest.raises(ValueError, match='pixel_mm'):
    quality_fn(params, np.zeros((64, 64)), -1.0)
