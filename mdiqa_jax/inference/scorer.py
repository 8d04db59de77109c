"""The Python API: score CT slices in HU, or files, with a trained model.

  import mdiqa_jax
  scorer = mdiqa_jax.Scorer.load()            # the bundled model (no training)
  scorer = mdiqa_jax.Scorer.load('runs/x')    # or any training workdir
  result = scorer.score(hu, pixel_mm=0.74)    # (H, W) or (N, H, W) HU
  result.scores, result.uncertainties, result.heatmaps
  rows = scorer.score_files(['scan/', 'a.dcm'])   # mdiqa-predict's rows
  quality = jax.jit(scorer.quality_fn, static_argnums=2)
  jax.grad(lambda x: quality(scorer.params, x, 0.74).sum())(hu)

`score` and `score_files` go through the one whole-slice scoring path
(`inference.scoring.score_slices`, the same as mdiqa-predict and evaluation), so
the same slice gets the same score from the command line and from Python.
`quality_fn` is its smooth, differentiable twin (`inference/quality_fn.py`).
"""
import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from mdiqa_jax import command_errors
from mdiqa_jax import models
from mdiqa_jax.data import intensity as intensity_lib
from mdiqa_jax.inference import bundled
from mdiqa_jax.inference import checkpoint
from mdiqa_jax.inference import paths as paths_lib
from mdiqa_jax.inference import quality_fn as quality_fn_lib
from mdiqa_jax.inference import rows as rows_lib
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference.preprocessing import Preprocessing
from mdiqa_jax.io import slices as slices_lib

# Fewest HU a CT slice of a patient spans: air or lung (< -500 HU) and soft
# tissue (> -200 HU) lie far apart. Arrays in [0, 1] (or 0..255) are images
# already windowed or normalised, and scored as HU they would read as air.
_MIN_HU_SPAN = 300.0


class ScorerInputError(command_errors.UserError, ValueError):
  """An array cannot be scored as CT slices in HU (shape, dtype, values, spacing)."""


class SuspiciousHUWarning(UserWarning):
  """Values that are valid numbers but unlikely HU (no air, nothing below 0)."""


@dataclasses.dataclass(frozen=True)
class SliceScores:
  """What `Scorer.score` returns for N slices.

  Attributes:
    scores: (N,) float64 quality, 0 (bad) .. 4 (excellent).
    uncertainties: (N,) float64 std of the predicted score distribution,
      score units.
    heatmaps: N arrays (h, w) float32, the patch scores over the slice as
      scored (NaN where no scored patch lies); (h, w) = (H, W) unless the
      spacing was resampled into the trained range.
    weight_maps: N arrays (h, w) float32, each pixel's share of its slice
      score's weight (sums to ~1).
    pixel_mm: N (row, column) spacings scored at, mm.
    notes: N lists of str (spacing assumed or resampled, no body found).
  """
  scores: np.ndarray
  uncertainties: np.ndarray
  heatmaps: List[np.ndarray]
  weight_maps: List[np.ndarray]
  pixel_mm: List[Tuple[float, float]]
  notes: List[List[str]]


def _spacing_pair(pixel_mm: Any) -> Tuple[float, float]:
  try:
    values = np.atleast_1d(np.asarray(pixel_mm, np.float64)).ravel()
  except (TypeError, ValueError):
    values = np.array([np.nan])
  if values.size not in (1, 2) or not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ScorerInputError(f'pixel_mm must be a positive spacing in mm (one number or '
                           f'(row, column)), got {pixel_mm!r}.')
  return (float(values[0]), float(values[-1]))


def check_hu_slices(hu: Any) -> np.ndarray:
  """(H, W) or (N, H, W) real, finite HU -> (N, H, W) float32, or ScorerInputError."""
  array = np.asarray(hu)
  if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                   or array.dtype == np.bool_):
    raise ScorerInputError(f'expected a numeric array of HU, got dtype {array.dtype}.')
  if np.iscomplexobj(array) or array.dtype == np.bool_:
    raise ScorerInputError(f'expected real HU values, got dtype {array.dtype}.')
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[0] == 0:
    raise ScorerInputError(f'expected one slice (H, W) or a stack (N, H, W), got shape '
                           f'{np.shape(hu)}.')
  if min(array.shape[1:]) < slices_lib.MIN_SIDE:
    raise ScorerInputError(f'slices of {array.shape[1]} x {array.shape[2]} pixels are too '
                           f'small to score (at least {slices_lib.MIN_SIDE} per side).')
  array = array.astype(np.float32)
  bad = ~np.isfinite(array)
  if bad.any():
    first = np.argwhere(bad)[0]
    raise ScorerInputError(f'{int(bad.sum())} NaN or infinite value(s), the first in slice '
                           f'{first[0]} at row {first[1]}, column {first[2]}.')
  for index, image in enumerate(array):
    low, high = float(image.min()), float(image.max())
    if high - low < _MIN_HU_SPAN and low > -200.0:
      raise ScorerInputError(
          f'slice {index}: values span only [{low:g}, {high:g}], which cannot be HU of a CT '
          'slice (air is -1000, soft tissue 0-100); this looks like an image already '
          'windowed or normalised. Pass HU (DICOM: stored value x RescaleSlope + '
          'RescaleIntercept), or score files with score_files().')
    if low >= 0.0 and high > 1000.0:
      # Legitimate for a few maps stored as CT (a perfusion map reads 0..1100),
      # so a warning, not an error.
      warnings.warn(
          f'slice {index}: values span [{low:g}, {high:g}] with nothing below 0: if these '
          'are stored CT numbers without the RescaleIntercept (air would be -1000 HU, not '
          '0), pass stored value x RescaleSlope + RescaleIntercept.', SuspiciousHUWarning,
          stacklevel=3)
  return array


@dataclasses.dataclass
class Scorer:
  """A trained model with everything needed to score slices (module docstring).

  Attributes:
    config: the run config.
    params: model parameters (host arrays).
    source: 'bundled' or the workdir / step directory loaded.
    record: the bundled model's record (dataset, commit, metrics), or {}.
  """
  config: ml_collections.ConfigDict
  params: Any
  source: str
  record: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.model = models.create_model(self.config)
    self.preprocessing = Preprocessing.from_config(self.config)
    self._predict_fn = scoring.make_tile_predict_fn(self.model)
    self.quality_fn = quality_fn_lib.make_quality_fn(self.model, self.preprocessing)

  @classmethod
  def load(cls, path: Optional[str] = None) -> 'Scorer':
    """The bundled model (path None) or a training workdir / step directory.

    Raises:
      bundled.BundledModelError or checkpoint.CheckpointError, naming the file.
    """
    if path is None:
      config, params, record = bundled.load()
      return cls(config, params, 'bundled', record)
    config, params = checkpoint.load_checkpoint(path)
    return cls(config, jax.device_get(params), path)

  @property
  def pixel_mm_range(self) -> Tuple[float, float]:
    """Pixel spacing (mm) the model was trained on; others are resampled into it."""
    return self.preprocessing.pixel_mm_range

  def score(self, hu: Any, pixel_mm: Any = None, *, batch_size: Optional[int] = None
            ) -> SliceScores:
    """Scores (H, W) or (N, H, W) slices in HU.

    Args:
      hu: HU values (any real dtype).
      pixel_mm: spacing in mm, one number or (row, column), for every slice;
        None assumes the training data's spacing (config.data.pixel_mm) and
        says so in the notes. Spacings outside `pixel_mm_range` are
        resampled to its nearest end (noted), as mdiqa-predict does.
      batch_size: tiles per jitted call (default config.eval_batch_size).

    Raises:
      ScorerInputError: wrong shape or dtype, NaN / inf, values that are not
        HU, a non-positive spacing.
    """
    images = check_hu_slices(hu)
    assumed = pixel_mm is None
    spacing = _spacing_pair(self.preprocessing.assumed_pixel_mm if assumed else pixel_mm)
    unit = intensity_lib.window_to_unit(images, self.preprocessing.window_width,
                                        self.preprocessing.window_level)
    items = ((index, image, spacing) for index, image in enumerate(unit))
    scored = dict(scoring.score_slices(
        self._predict_fn, self.params, items, self.preprocessing,
        tile_batch=batch_size or int(self.config.eval_batch_size), with_maps=True))
    predictions = [scored[index] for index in range(len(images))]
    assumed_note = [f'no pixel_mm given; assumed {spacing[0]:.3g} mm (the training '
                    "data's spacing)"] if assumed else []
    return SliceScores(
        scores=np.array([p['score'] for p in predictions]),
        uncertainties=np.array([p['uncertainty'] for p in predictions]),
        heatmaps=[p['score_map'] for p in predictions],
        weight_maps=[p['weight_map'] for p in predictions],
        pixel_mm=[tuple(p['pixel_mm']) for p in predictions],
        notes=[assumed_note + list(p['notes']) for p in predictions])

  def score_files(self, paths: Sequence[str], *, pixel_mm: Optional[float] = None,
                  intensity: str = 'auto', batch_size: Optional[int] = None
                  ) -> List[Dict[str, Any]]:
    """mdiqa-predict's rows for files and folders (one per slice, in input order);
    a file that cannot be scored is a row with its 'error' (and no score)."""
    if isinstance(paths, str):
      paths = [paths]
    rows, failures = paths_lib.predict_paths(
        self.config, self.params, paths, intensity=intensity, batch_size=batch_size,
        pixel_mm=pixel_mm, predict_fn=self._predict_fn)
    return rows + [rows_lib.failure_row(error) for error in failures]
