"""How a slice becomes model input: the spec shared by every scoring path.

`Preprocessing` holds the settings (from the run config and the command line);
`STEPS` says in words what scoring does with them. Both are recorded in
mdiqa-predict's JSON output and in every export (preprocessing.json), so that
a user without this package can reproduce the scores.
"""
import dataclasses
from typing import Optional, Tuple

import ml_collections
import numpy as np

from mdiqa_jax import models
from mdiqa_jax.data import intensity as intensity_lib
from mdiqa_jax.data import preprocess
from mdiqa_jax.models import bins

STEPS = (
    'HU -> [0, 1]: clip((HU - (window_level - window_width / 2)) / window_width, '
    '0, 1) (float slices already in [0, 1] are used as they are)',
    'pixel spacing: the file\'s (DICOM PixelSpacing), else assumed_pixel_mm; a '
    'slice whose spacing lies outside pixel_mm_range is resampled (band-'
    'limited: DCT-II spectrum cut or zero-padded, preprocess.resample_band_limited) '
    'to the nearest end of the range; '
    'otherwise pixels are used as they are (never resized)',
    'body mask: 7 x 7 mean of the [0, 1] slice > 0.007; tiles of tile_size x '
    'tile_size native pixels on a grid of ceil(H / tile_size) x ceil(W / '
    'tile_size) origins spread evenly from 0 to H - tile_size (W likewise); '
    'tiles whose body fraction is below min_body_fraction are skipped',
    'slice score: every patch i of every tile weighted by patch_weights_i x its '
    'body fraction; p_k = sum_i w_i exp(patch_log_probs_ik) / sum_i w_i per head '
    'k; score = expectation of mean_k p_k, uncertainty = its standard deviation '
    '(point heads: score = sum_i w_i patch_scores_i / sum_i w_i)',
)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a slice becomes model input (recorded in outputs and exports).

  Attributes:
    tile_size: side of the model's input tiles, native pixels.
    patch_size: side of one patch of the head's grid, pixels.
    pixel_mm_range: (low, high) pixel spacing the model was trained on, mm.
    assumed_pixel_mm: spacing taken for files that carry none (TIFF, PNG,
      .npy, the challenge's TIFFs), mm.
    min_body_fraction: tiles with less body are not scored.
    window_width, window_level: soft-tissue window applied to HU, HU.
    score_min, score_max, bin_width: the score bins of the head.
  """
  tile_size: int
  patch_size: int
  pixel_mm_range: Tuple[float, float]
  assumed_pixel_mm: float
  min_body_fraction: float
  window_width: float = intensity_lib.WINDOW_WIDTH_HU
  window_level: float = intensity_lib.WINDOW_LEVEL_HU
  score_min: float = 0.0
  score_max: float = 4.0
  bin_width: float = 0.2

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  window_width: Optional[float] = None,
                  window_level: Optional[float] = None,
                  assumed_pixel_mm: Optional[float] = None) -> 'Preprocessing':
    """The run's preprocessing; None arguments keep the config / window defaults."""
    data = config.data
    preprocessing = cls(
        tile_size=int(data.image_size),
        patch_size=models.patch_size(config.model),
        pixel_mm_range=preprocess.check_spacing_range(data.pixel_mm_range),
        assumed_pixel_mm=float(data.pixel_mm if assumed_pixel_mm is None
                               else assumed_pixel_mm),
        min_body_fraction=float(data.min_body_fraction),
        score_min=float(config.model.head.score_min),
        score_max=float(config.model.head.score_max),
        bin_width=float(config.model.head.bin_width),
        window_width=float(intensity_lib.WINDOW_WIDTH_HU if window_width is None
                           else window_width),
        window_level=float(intensity_lib.WINDOW_LEVEL_HU if window_level is None
                           else window_level))
    if not preprocessing.window_width > 0:
      raise ValueError(f'window width must be > 0 HU, got {preprocessing.window_width}.')
    if not preprocessing.assumed_pixel_mm > 0:
      raise ValueError('the assumed pixel spacing (config.data.pixel_mm / --pixel_mm) '
                       f'must be > 0 mm, got {preprocessing.assumed_pixel_mm}.')
    return preprocessing

  @property
  def bin_centers(self) -> np.ndarray:
    return np.asarray(bins.bin_centers(self.score_min, self.score_max, self.bin_width),
                      np.float64)
