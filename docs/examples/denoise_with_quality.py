r"""Quality as a metric and as a loss for a denoiser, with the bundled model.

  python docs/examples/denoise_with_quality.py [--steps=30]

1. Metric: a real CT slice (pydicom-data's 693_UNCI.dcm, 0.48 mm) with added
   noise, and three classical denoisers of it, scored with Scorer.score (the
   exact path mdiqa-predict uses).
2. Loss: a tiny residual CNN denoiser (flax, 3 conv layers) trained for a few
   Adam steps on random crops of the noisy slice, no clean target, with
       loss = -quality_fn(denoised) + fidelity * mean((denoised - noisy)^2) / 40^2
   (a no-reference perceptual term and a data term that keeps it from
   painting a different image); its score before and after.

What a no-reference score cannot do alone: it rewards smoothness, so without
the fidelity term a denoiser could blur away anatomy and still score well;
judge denoisers by their score AND by a fidelity or task measure.
"""
import argparse
import importlib.resources

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydicom
from pydicom.pixels import apply_rescale
from scipy import ndimage

import mdiqa_jax


class TinyDenoiser(nn.Module):
  """(B, H, W) HU -> (B, H, W) HU: the input minus a predicted noise map."""

  @nn.compact
  def __call__(self, hu):
    x = (hu / 1000.0)[..., None]
    h = nn.gelu(nn.Conv(16, (3, 3))(x))
    h = nn.gelu(nn.Conv(16, (3, 3))(h))
    noise = nn.Conv(1, (3, 3), kernel_init=nn.initializers.zeros)(h)
    return hu - 1000.0 * noise[..., 0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--noise_hu', type=float, default=40.0)
  parser.add_argument('--fidelity', type=float, default=1.0)
  args = parser.parse_args()

  ds = pydicom.dcmread(str(importlib.resources.files('data_store') / 'data/693_UNCI.dcm'))
  clean = apply_rescale(ds.pixel_array, ds).astype(np.float32)
  pixel_mm = float(ds.PixelSpacing[0])
  noisy = clean + np.random.default_rng(0).normal(0, args.noise_hu, clean.shape).astype(np.float32)
  scorer = mdiqa_jax.Scorer.load()

  print('1. Scores of a real slice (0 bad .. 4 excellent):')
  candidates = {
      'original': clean, f'noisy (+{args.noise_hu:g} HU)': noisy,
      'gaussian sigma 0.7 px': ndimage.gaussian_filter(noisy, 0.7),
      'gaussian sigma 1.2 px': ndimage.gaussian_filter(noisy, 1.2),
      'median 3 x 3': ndimage.median_filter(noisy, 3),
  }
  result = scorer.score(np.stack(list(candidates.values())), pixel_mm=pixel_mm)
  for (name, image), score, spread in zip(candidates.items(), result.scores,
                                          result.uncertainties):
    rmse = float(np.sqrt(np.mean((image - clean)[clean > -500] ** 2)))
    print(f'   {name:24s} score {score:.3f} +- {spread:.3f}   RMSE vs original {rmse:5.1f} HU')

  print(f'2. Training a tiny denoiser with the quality in its loss ({args.steps} steps):')
  denoiser = TinyDenoiser()
  crop = 96 * 2
  params = denoiser.init(jax.random.PRNGKey(0), jnp.zeros((1, crop, crop)))
  optimizer = optax.adam(1e-3)
  state = optimizer.init(params)
  quality_fn = scorer.quality_fn

  def loss_fn(params, batch):
    denoised = denoiser.apply(params, batch)
    quality = quality_fn(scorer.params, denoised, pixel_mm).mean()
    fidelity = jnp.mean(jnp.square(denoised - batch)) / args.noise_hu**2
    return -quality + args.fidelity * fidelity, quality

  @jax.jit
  def step(params, state, batch):
    (loss, quality), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, quality

  rng = np.random.default_rng(1)
  body = np.argwhere(ndimage.binary_erosion(clean > -300, iterations=crop // 2))
  for index in range(args.steps):
    corners = body[rng.integers(0, len(body), 2)] - crop // 2
    batch = jnp.stack([noisy[r:r + crop, c:c + crop] for r, c in corners])
    params, state, loss, quality = step(params, state, batch)
    if index % max(1, args.steps // 6) == 0 or index == args.steps - 1:
      print(f'   step {index:3d}  loss {float(loss):+.3f}  quality of the batch {float(quality):.3f}')
  denoised = np.asarray(denoiser.apply(params, noisy[None]))[0]
  before, after = scorer.score(np.stack([noisy, denoised]), pixel_mm=pixel_mm).scores
  rmse = float(np.sqrt(np.mean((denoised - clean)[clean > -500] ** 2)))
  print(f'   whole slice: noisy {before:.3f} -> denoised {after:.3f} '
        f'(RMSE vs original {rmse:.1f} HU)')


if __name__ == '__main__':
  main()
