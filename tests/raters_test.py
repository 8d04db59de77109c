"""Tests of the simulated radiologists (raters.py)."""
import math

import numpy as np
import pytest

from mdiqa_jax.data import phantoms
from mdiqa_jax.data import raters


def _slice(size=64, lesion_contrast=None):
  yy, xx = np.mgrid[0:size, 0:size] - size / 2
  body = xx**2 + yy**2 < (0.45 * size)**2
  liver = body & (xx < 0)
  muscle = body & (xx >= 0)
  masks = {'body': body, 'liver': liver, 'spleen': np.zeros_like(body),
           'muscle': muscle, 'lesion': np.zeros_like(body)}
  lesions = ()
  if lesion_contrast is not None:
    lesion = (xx + size / 4)**2 + yy**2 < 16
    masks['lesion'] = lesion
    masks['liver'] = liver & ~lesion
    lesions = ((lesion, lesion_contrast),)
  return phantoms.Slice(hu=np.zeros((size, size), np.float32), masks=masks,
                        lesions=lesions)


def test_measure_recovers_known_noise_and_streaks():
  rng = np.random.default_rng(0)
  slice_ = _slice()
  reference = rng.normal(50.0, 30.0, (64, 64))  # Anatomy: any image.
  streaks = np.where(slice_.masks['body'], 7.0, 0.0)
  noiseless = reference + streaks
  noisy = noiseless + rng.normal(0.0, 20.0, (64, 64))
  measured = raters.measure(noisy, noiseless, reference, slice_)
  assert measured.noise_hu == pytest.approx(20.0, rel=0.05)
  assert measured.streak_hu == pytest.approx(7.0, rel=1e-6)
  assert measured.lesion_cnr == math.inf


def test_lesion_cnr_falls_with_noise_and_rises_with_contrast():
  rng = np.random.default_rng(1)
  reference = np.zeros((64, 64))

  def cnr(contrast, noise_std):
    noisy = reference + rng.normal(0.0, noise_std, (64, 64))
    return raters.measure(noisy, noisy, reference,
                          _slice(lesion_contrast=contrast)).lesion_cnr

  assert cnr(20.0, 10.0) > cnr(20.0, 40.0)
  assert cnr(30.0, 10.0) > cnr(10.0, 10.0)


def test_quality_falls_monotonically_with_noise_and_streaks():
  panel = raters.sample_panel(5, np.random.default_rng(2))
  reference = raters.REFERENCE_NOISE_HU
  levels = [0.5 * reference, reference] + [
      reference * factor for factor in (1.4, 2.0, 4.0, 8.0, 16.0)]
  for rater in panel:
    by_noise = [raters.quality(raters.Measurements(n, 0.0, math.inf), rater)
                for n in levels]
    by_streak = [raters.quality(raters.Measurements(reference, s, math.inf),
                                rater) for s in levels]
    assert all(np.diff(by_noise[1:]) < 0) and by_noise[0] == by_noise[1] == 4.0
    assert all(np.diff(by_streak) < 0)
    invisible = raters.quality(raters.Measurements(reference, 0.0, 0.5), rater)
    assert invisible < by_noise[1]  # An undetectable lesion costs points.
    # Each doubling of the artefacts costs about SLOPE points.
    assert by_noise[3] - by_noise[4] == pytest.approx(
        rater.sensitivity * raters.SLOPE)


def test_rate_gives_integer_scores_in_likert_range():
  panel = raters.sample_panel(5, np.random.default_rng(3))
  rng = np.random.default_rng(4)
  for noise in (1.0, 12.0, 40.0, 400.0, 4000.0):
    scores = raters.rate(raters.Measurements(noise, 0.0, math.inf), panel, rng)
    assert scores.shape == (5,) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, np.round(scores))
    assert scores.min() >= 0 and scores.max() <= 4
  clean = raters.rate(raters.Measurements(5.0, 0.0, math.inf), panel, rng)
  awful = raters.rate(raters.Measurements(4000.0, 0.0, math.inf), panel, rng)
  assert clean.mean() > 3.0 and awful.mean() == 0.0


def test_panel_is_deterministic_and_raters_differ():
  first = raters.sample_panel(5, np.random.default_rng(5))
  assert first == raters.sample_panel(5, np.random.default_rng(5))
  assert len({rater.bias for rater in first}) == 5
  with pytest.raises(ValueError, match='num_raters'):
    raters.sample_panel(0, np.random.default_rng(5))
