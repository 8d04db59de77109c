"""The scoring loop over a dataset split, on every host: `predict_split`.

Each host scores its shard of the split (`pipeline.host_examples`) on its
local devices, tile batches sharded over them; the shards are then gathered,
so every host returns the whole split, ordered by position in it. Used by
evaluation, validation during training and the pseudo-labels.
"""
import math
from typing import Any, Dict, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import tqdm

from mdiqa_jax import models
from mdiqa_jax.data import pipeline
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference.predict_fn import PredictFn
from mdiqa_jax.inference.preprocessing import Preprocessing

Predictions = Dict[str, np.ndarray]


def predict_split(config: ml_collections.ConfigDict, params: Any, split: str, *,
                  predict_fn: Optional[PredictFn] = None,
                  show_progress: bool = False) -> Predictions:
  """Scores every slice of `split` whole (all hosts take part).

  Each host scores its shard on its local devices (tile batches sharded over
  them); the shards are then gathered, so every host returns the whole split.
  Args:
    config: the run config (data, model, eval_batch_size = tiles per call).
    params: model parameters (host or device arrays).
    split: TFDS split name (slicing allowed).
    predict_fn: from scoring.make_tile_predict_fn (built from config when None).
    show_progress: tqdm bar with ETA on process 0.
  Returns:
    numpy arrays ordered by 'index' (position in the split): 'index' (N,)
    int32, 'label' (N,), 'score' (N,), 'uncertainty' (N,), 'scale_scores'
    (N, K) and, for distribution heads, 'log_probs' (N, K, bins).
  """
  process_count = jax.process_count()
  local_devices = jax.local_devices()
  tile_batch = int(config.eval_batch_size)
  if tile_batch % len(local_devices):
    raise ValueError(
        f'config.eval_batch_size={tile_batch} (tiles per call) must be a multiple of the '
        f'number of local devices ({len(local_devices)}).')
  if predict_fn is None:
    predict_fn = scoring.make_tile_predict_fn(models.create_model(config))
  preprocessing = Preprocessing.from_config(config)
  mesh = Mesh(np.asarray(local_devices), ('batch',))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  tile_sharding = NamedSharding(mesh, PartitionSpec('batch'))

  num_examples = pipeline.num_examples(config.data, split)
  per_host = math.ceil(num_examples / process_count)
  labels: Dict[int, float] = {}

  def slices():
    for index, example in pipeline.host_examples(config.data, split):
      labels[index] = float(example['score'])
      yield index, example['image'], pipeline.example_pixel_mm(example, config.data)

  scored = scoring.score_slices(
      predict_fn, params, slices(), preprocessing, tile_batch=tile_batch,
      put=lambda tiles: jax.device_put(tiles, tile_sharding), multiple_of=len(local_devices))
  rows = []
  for index, prediction in tqdm.tqdm(scored, total=per_host, desc=f'score {split}',
                                     unit='slice',
                                     disable=not show_progress or jax.process_index() != 0):
    rows.append(_prediction_row(index, labels.pop(index), prediction))
  gathered = _stack_rows(rows, per_host)
  if process_count > 1:
    gathered = {key: np.concatenate(list(value)) for key, value in
                multihost_utils.process_allgather(gathered).items()}
  valid = gathered.pop('valid').astype(bool)
  order = np.argsort(gathered['index'][valid], kind='stable')
  predictions = {key: value[valid][order] for key, value in gathered.items()}
  if predictions['index'].size != num_examples:
    raise RuntimeError(f'Predicted {predictions["index"].size} examples of split {split!r}, '
                       f'expected {num_examples}.')
  return predictions


def _prediction_row(index: int, label: float, prediction: Dict[str, Any]) -> Dict[str, Any]:
  row = {'index': np.int32(index), 'label': np.float32(label), 'valid': np.bool_(True),
         'score': np.float32(prediction['score']),
         'uncertainty': np.float32(prediction['uncertainty']),
         'scale_scores': prediction['scale_scores']}
  if 'log_probs' in prediction:
    row['log_probs'] = prediction['log_probs']
  return row


def _stack_rows(rows, size: int) -> Predictions:
  """Rows -> arrays of `size` rows (padding rows have valid False), so that
  every host contributes arrays of one shape to the gather."""
  if not rows:
    raise RuntimeError('This host has no examples to score; use fewer hosts than examples.')
  stacked = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
  padding = size - len(rows)
  return {key: np.concatenate([value, np.zeros((padding,) + value.shape[1:], value.dtype)])
          for key, value in stacked.items()}
