"""Whole-slice scoring at native resolution: the one inference path.

Evaluation of a dataset split, `mdiqa-predict`, semi-supervised pseudo-labels
and the dose / transfer benchmarks all score a slice the same way:

  slice (H, W) in [0, 1] + pixel spacing (mm)
    -> `preprocess.fit_spacing`: resampled only when the spacing lies outside
       the range the model was trained on (config.data.pixel_mm_range)
    -> `preprocess.cut_tiles`: native-pixel tiles of the training side that
       cover the whole slice; each model patch gets the fraction of body
       pixels under it (background weighs nothing)
    -> the model, tile batches of a fixed size under jax.jit
    -> `combine_tiles`: the paper's patch-weighted score at slice level,
       every patch i of every tile weighted by w_i * body_i:
         p_k(bin) = sum_i w_i body_i p_ik(bin) / sum_i w_i body_i   (head k)
       score = expectation of the mixture of the K heads, uncertainty = its
       standard deviation (for a single full-body tile: exactly the model's
       own outputs).

Tiles are processed independently and the pooling is a fixed function of
them, so a slice's score does not depend on which other slices share its
batches (up to float rounding in the batched matmuls, < 1e-6).
"""
import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import jax
import ml_collections
import numpy as np

from mdiqa_jax import losses
from mdiqa_jax.data import intensity as intensity_lib
from mdiqa_jax.data import preprocess

# Per-tile model outputs the pooling reads ('patch_log_probs': distribution heads).
TILE_KEYS = ('patch_scores', 'patch_weights', 'patch_log_probs')

TilePredictFn = Callable[[Any, jax.Array], Dict[str, jax.Array]]


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
    score_min, score_max, bin_width: the score bins of the head.
    window_width, window_level: soft-tissue window applied to HU, HU.
  """
  tile_size: int
  patch_size: int
  pixel_mm_range: Tuple[float, float]
  assumed_pixel_mm: float
  min_body_fraction: float
  score_min: float = 0.0
  score_max: float = 4.0
  bin_width: float = 0.2
  window_width: float = intensity_lib.WINDOW_WIDTH_HU
  window_level: float = intensity_lib.WINDOW_LEVEL_HU

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  window_width: Optional[float] = None,
                  window_level: Optional[float] = None,
                  assumed_pixel_mm: Optional[float] = None) -> 'Preprocessing':
    """The run's preprocessing; None arguments keep the config / window defaults."""
    data = config.data
    preprocessing = cls(
        tile_size=int(data.image_size),
        patch_size=int(config.model.vit.patch_size),
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
    return np.asarray(losses.bin_centers(self.score_min, self.score_max, self.bin_width),
                      np.float64)


@functools.lru_cache(maxsize=4)
def make_tile_predict_fn(model) -> TilePredictFn:
  """jit(params, tiles (n, S, S, 1) in [0, 1]) -> the model's TILE_KEYS.

  Cached per model (flax modules are hashable), so repeated calls in one
  process reuse the compiled function.
  """
  def predict(params, tiles):
    outputs = model.apply({'params': params}, tiles, train=False)
    return {key: outputs[key] for key in TILE_KEYS if key in outputs}
  return jax.jit(predict)


def combine_tiles(outputs: Dict[str, np.ndarray], patch_body: np.ndarray,
                  bin_centers: np.ndarray) -> Dict[str, Any]:
  """Pools the patch predictions of all tiles of one slice (module docstring).

  Args:
    outputs: 'patch_weights', 'patch_scores' (T, h, w) and, for distribution
      heads, 'patch_log_probs' (T, h, w, K, bins).
    patch_body: (T, h, w) body fraction of every patch, in [0, 1].
    bin_centers: (bins,) score of each bin.

  Returns:
    'score', 'uncertainty' (floats), 'scale_scores' (K,) float32 and, for
    distribution heads, 'log_probs' (K, bins) float32. A point head has
    K = 1 and uncertainty 0, as on a single tile.
  """
  weights = np.asarray(outputs['patch_weights'], np.float64) * patch_body
  weights = weights / weights.sum()
  if 'patch_log_probs' not in outputs:
    score = float(np.sum(weights * outputs['patch_scores']))
    return {'score': score, 'uncertainty': 0.0,
            'scale_scores': np.array([score], np.float32)}
  probs = np.einsum('thw,thwkb->kb', weights,
                    np.exp(np.asarray(outputs['patch_log_probs'], np.float64)))
  mixture = probs.mean(axis=0)
  score = float(mixture @ bin_centers)
  variance = float(mixture @ np.square(bin_centers)) - score**2
  return {'score': score, 'uncertainty': math.sqrt(max(variance, 0.0)),
          'scale_scores': (probs @ bin_centers).astype(np.float32),
          'log_probs': np.log(np.maximum(probs, 1e-30)).astype(np.float32)}


def patch_maps(outputs: Dict[str, np.ndarray], tiles: preprocess.Tiles,
               shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """Whole-slice maps of what each patch contributed, for heatmaps.

  Returns:
    'score_map' (H, W) float32: weighted mean of the scores of the patches
    covering each pixel (NaN where no scored patch lies); 'weight_map'
    (H, W) float32: each pixel's share of the slice score's total weight,
    per pixel (sums to about 1 over the slice).
  """
  patch = tiles.images.shape[1] // outputs['patch_scores'].shape[1]
  height, width = max(shape[0], tiles.images.shape[1]), max(shape[1], tiles.images.shape[2])
  weighted, total = np.zeros((height, width)), np.zeros((height, width))
  weights = np.asarray(outputs['patch_weights'], np.float64) * tiles.patch_body
  pixels = np.ones((patch, patch))  # Spreads one patch value over its pixels.
  for (top, left), weight, score in zip(tiles.origins, weights, outputs['patch_scores']):
    rows, cols = slice(top, top + weight.shape[0] * patch), slice(left, left + weight.shape[1] * patch)
    weighted[rows, cols] += np.kron(weight * score, pixels)
    total[rows, cols] += np.kron(weight, pixels)
  with np.errstate(invalid='ignore', divide='ignore'):
    score_map = np.where(total > 0, weighted / total, np.nan)
  weight_map = total / max(total.sum(), 1e-30)
  return {'score_map': score_map[:shape[0], :shape[1]].astype(np.float32),
          'weight_map': weight_map[:shape[0], :shape[1]].astype(np.float32)}


@dataclasses.dataclass
class _SliceWork:
  key: Any
  tiles: preprocess.Tiles
  pixel_mm: Tuple[float, float]
  notes: list
  image: np.ndarray
  outputs: Dict[str, list] = dataclasses.field(default_factory=dict)
  done: int = 0


def _padded_size(rows: int, batch_size: int, multiple_of: int) -> int:
  size = min(batch_size, 1 << max(0, math.ceil(math.log2(rows))))
  return -(-size // multiple_of) * multiple_of


def score_slices(predict_fn: TilePredictFn, params: Any,
                 items: Iterable[Tuple[Any, np.ndarray, Tuple[float, float]]],
                 preprocessing: Preprocessing, *, tile_batch: int,
                 put: Callable[[np.ndarray], Any] = np.asarray, multiple_of: int = 1,
                 with_maps: bool = False) -> Iterator[Tuple[Any, Dict[str, Any]]]:
  """Scores whole slices, lazily and in order.

  Args:
    predict_fn: from `make_tile_predict_fn`.
    params: model parameters.
    items: (key, image, pixel_mm): image (H, W) in [0, 1] (or uint8,
      `preprocess.as_slice`), pixel_mm its (row, column) spacing in mm; the
      key is passed through.
    preprocessing: tiling, spacing and score settings.
    tile_batch: tiles per jitted call (>= 1); the last call of a stream is
      padded to a power of two (so at most log2(tile_batch) + 1 shapes are
      compiled) rounded up to `multiple_of`.
    put: places a tile batch on devices (e.g. sharded over local devices).
    multiple_of: tile batches are padded to a multiple of this (device count).
    with_maps: also return the whole-slice maps (`patch_maps`) and the image
      as scored.

  Yields:
    (key, prediction): `combine_tiles`' keys plus 'pixel_mm' (row, column
    spacing as scored, mm), 'num_tiles', 'notes' (list of str: resampling, no
    body found) and, with_maps, 'score_map', 'weight_map', 'image'.
  """
  if tile_batch < 1:
    raise ValueError(f'tile batch size must be >= 1, got {tile_batch}.')
  centers = preprocessing.bin_centers
  pending: collections.deque = collections.deque()
  queue: list = []  # (work, tile index) of tiles not yet run.

  def run_queue():
    rows = len(queue)
    size = _padded_size(rows, tile_batch, multiple_of)
    batch = np.zeros((size,) + queue[0][0].tiles.images.shape[1:], np.float32)
    for row, (work, index) in enumerate(queue):
      batch[row] = work.tiles.images[index]
    outputs = jax.device_get(predict_fn(params, put(batch)))
    for row, (work, _) in enumerate(queue):
      for key, value in outputs.items():
        work.outputs.setdefault(key, []).append(np.asarray(value[row]))
      work.done += 1
    queue.clear()

  def finished():
    while pending and pending[0].done == len(pending[0].tiles.images):
      work = pending.popleft()
      outputs = {key: np.stack(values) for key, values in work.outputs.items()}
      prediction = combine_tiles(outputs, work.tiles.patch_body, centers)
      prediction.update(pixel_mm=work.pixel_mm, num_tiles=len(work.tiles.images),
                        notes=work.notes)
      if with_maps:
        prediction.update(patch_maps(outputs, work.tiles, work.image.shape), image=work.image)
      yield work.key, prediction

  for key, image, pixel_mm in items:
    image, spacing, note = preprocess.fit_spacing(preprocess.as_slice(image), pixel_mm,
                                                  preprocessing.pixel_mm_range)
    tiles = preprocess.cut_tiles(image, tile_size=preprocessing.tile_size,
                                 patch_size=preprocessing.patch_size,
                                 min_body_fraction=preprocessing.min_body_fraction)
    notes = [note] if note else []
    if not tiles.body_found:
      notes.append('no body found (nothing above the window floor in any tile): every '
                   'tile scored with equal weight')
    work = _SliceWork(key, tiles, spacing, notes, image if with_maps else None)
    pending.append(work)
    for index in range(len(tiles.images)):
      queue.append((work, index))
      if len(queue) == tile_batch:
        run_queue()
        yield from finished()
  if queue:
    run_queue()
  yield from finished()
