"""Simulated radiologists: what a reader sees, and the Likert scores they give.

A reader judging a low-dose slice at its native resolution looks at three
things, each measured here, at native pixels, against the full-dose,
full-view reconstruction of the same slice with the same kernel (the
simulator knows it; a radiologist knows what anatomy should look like):

  noise_hu     std (HU) of the quantum noise in homogeneous organs (liver,
               spleen, muscle; pure-tissue pixels): noisy reconstruction
               minus the noise-free reconstruction from the same views.
  streak_hu    RMS (HU) over the body of the view-aliasing streaks: the
               noise-free sparse-view reconstruction minus the full-view one
               (0 for full-view scans).
  lesion_cnr   how well the faintest lesion in the slice stands out: its
               contrast over the std of all artefacts (noise + streaks) in
               the liver after smoothing at the lesion's scale (a reader's
               eye integrates over the lesion area); inf without lesions.

Each rater turns them into a continuous quality on the 0..4 Likert scale,

  perceived = sqrt(noise_hu^2 + (streak_weight * streak_hu)^2)
  quality   = 4 - sensitivity * slope * max(0, log2(perceived / reference_noise_hu))
              - lesion_weight * clip(1 - lesion_cnr / rose_cnr, 0, 1)
  score     = clip(round(quality + bias + N(0, spread^2)), 0, 4)

so every rater's score falls monotonically with noise and streaks (Weber-like:
each doubling of the artefact level costs about `slope` points; images at or
below `reference_noise_hu`, a good full-dose scan, are excellent), with an
extra penalty when a lesion drops below the Rose detectability criterion.
Raters differ in bias (harsh / lenient), sensitivity, how much streaks bother
them compared with noise of equal RMS, and in their per-image spread. The label is the mean of the R integer
scores (multiples of 1 / R: 0.2 steps for R = 5, as in LDCTIQAC2023).
"""
import dataclasses
import math

import numpy as np
from scipy import ndimage

from mdiqa_jax.data import phantoms

# Population constants of the rater model (see the module docstring), tuned
# so that the clinical dataset's labels spread over 0..4 (its noise spans ~5
# doublings: kernels, slice thickness, spacing and dose; histogram in
# bench/results/simulate_bench.json).
REFERENCE_NOISE_HU = 15.0   # Artefacts of a good full-dose abdomen scan at
                            # native pixels (3 mm, Hann ~12, cosine ~17 HU).
SLOPE = 0.7                 # Likert points lost per doubling of artefacts.
ROSE_CNR = 3.0              # Lesion contrast-to-noise a reader needs.
LESION_WEIGHT = 0.7         # Likert points lost for an invisible lesion.
MAX_SCORE = 4


@dataclasses.dataclass(frozen=True)
class Measurements:
  """What a reader sees in one degraded slice (see the module docstring)."""
  noise_hu: float
  streak_hu: float
  lesion_cnr: float


@dataclasses.dataclass(frozen=True)
class Rater:
  """One simulated radiologist.

  Attributes:
    bias: added to every quality (Likert points; > 0 is lenient).
    sensitivity: multiplies the loss of quality with artefacts.
    streak_weight: how many HU of noise one HU of streak RMS is worth.
    spread: std of the rater's per-image disagreement with themselves.
  """
  bias: float
  sensitivity: float
  streak_weight: float
  spread: float


def sample_panel(num_raters: int, rng: np.random.Generator) -> tuple[Rater, ...]:
  """Draws a panel of raters (the same panel rates every image of a dataset)."""
  if num_raters < 1:
    raise ValueError(f'num_raters must be >= 1, got {num_raters}.')
  return tuple(
      Rater(bias=float(rng.normal(0.0, 0.25)),
            sensitivity=float(rng.uniform(0.85, 1.15)),
            streak_weight=float(rng.uniform(0.8, 1.3)),
            spread=float(rng.uniform(0.3, 0.5)))
      for _ in range(num_raters))


def measure(noisy_hu: np.ndarray, noiseless_hu: np.ndarray,
            reference_hu: np.ndarray, slice_: phantoms.Slice) -> Measurements:
  """Measures noise, streaks and lesion visibility of one reconstruction.

  Args:
    noisy_hu: (N, N) the degraded reconstruction, HU.
    noiseless_hu: (N, N) reconstruction of noise-free data from the same
      views, HU.
    reference_hu: (N, N) noise-free full-view reconstruction, HU.
    slice_: the phantom slice (tissue masks and lesions).

  Returns:
    Measurements.
  """
  homogeneous = np.zeros(noisy_hu.shape, bool)
  for name in phantoms.HOMOGENEOUS_TISSUES:
    homogeneous |= slice_.masks[name]
  if not homogeneous.any():
    homogeneous = slice_.masks['body']
  noise = noisy_hu - noiseless_hu
  noise_hu = float(np.std(noise[homogeneous]))
  streaks = (noiseless_hu - reference_hu)[slice_.masks['body']]
  streak_hu = float(np.sqrt(np.mean(np.square(streaks))))
  lesion_cnr = math.inf
  artefacts = noisy_hu - reference_hu
  liver = slice_.masks['liver'] | slice_.masks['lesion']
  for mask, contrast in slice_.lesions:
    radius_pixels = math.sqrt(mask.sum() / math.pi)
    smoothed = ndimage.gaussian_filter(artefacts, max(radius_pixels / 2.0, 0.5))
    cnr = abs(contrast) / max(float(np.std(smoothed[liver])), 1e-6)
    lesion_cnr = min(lesion_cnr, cnr)
  return Measurements(noise_hu=noise_hu, streak_hu=streak_hu,
                      lesion_cnr=lesion_cnr)


def quality(measurements: Measurements, rater: Rater) -> float:
  """A rater's noise-free quality on the 0..4 scale (may leave [0, 4])."""
  perceived = math.hypot(measurements.noise_hu,
                         rater.streak_weight * measurements.streak_hu)
  artefact_loss = max(0.0, math.log2(max(perceived, 1e-6) / REFERENCE_NOISE_HU))
  lesion_loss = LESION_WEIGHT * min(
      max(1.0 - measurements.lesion_cnr / ROSE_CNR, 0.0), 1.0)
  return MAX_SCORE - rater.sensitivity * SLOPE * artefact_loss - lesion_loss


def rate(measurements: Measurements, panel: tuple[Rater, ...],
         rng: np.random.Generator) -> np.ndarray:
  """Each rater's integer Likert score of one image.

  Returns:
    (len(panel),) float32 integers in 0..4.
  """
  scores = [
      round(quality(measurements, rater) + rater.bias +
            rng.normal(0.0, rater.spread)) for rater in panel
  ]
  return np.clip(np.asarray(scores, np.float32), 0, MAX_SCORE)
