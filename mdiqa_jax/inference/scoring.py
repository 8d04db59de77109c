"""The one scoring loop: whole slices, at native resolution, in tile batches.

  slice (H, W) in [0, 1] + pixel spacing (mm)
    -> `preprocess.fit_spacing`: resampled only when the spacing lies outside
       the range the model was trained on (config.data.pixel_mm_range)
    -> `preprocess.cut_tiles`: native-pixel tiles of the training side that
       cover the whole slice; each model patch gets the fraction of body
       pixels under it
    -> the model, tile batches of a fixed size under jax.jit (`predict_fn`)
    -> `tiles.combine_tiles`: the patch-weighted score of the slice
Evaluation of a split (`split.py`), mdiqa-predict (`paths.py`), the
pseudo-labels and the benchmarks all run this loop. Tiles are processed
independently and the pooling is a fixed function of them, so a slice's score
does not depend on which other slices share its batches (up to float rounding
in the batched matmuls, < 1e-6).
"""
import collections
import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, Iterator, Tuple

import jax
import numpy as np

from mdiqa_jax.data import preprocess
from mdiqa_jax.inference.predict_fn import PredictFn, make_predict_fn
from mdiqa_jax.inference.preprocessing import Preprocessing
from mdiqa_jax.inference.tiles import TILE_KEYS, combine_tiles, patch_maps


def make_tile_predict_fn(model: Any) -> PredictFn:
  """`make_predict_fn(model, TILE_KEYS)`: the outputs `score_slices` pools."""
  return make_predict_fn(model, TILE_KEYS)


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


def score_slices(predict_fn: PredictFn, params: Any,
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
