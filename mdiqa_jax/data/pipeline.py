"""Input pipeline: TFDS array-record files -> grain -> numpy batches per host.

  TFDS builder (ldct_iqa_synthetic / ldctiqac2023), built once to array_record
    -> `builder.as_data_source(split)`: random access, no TensorFlow
    -> grain.MapDataset: per-host shard, global shuffle (reshuffled every
       epoch), per-example augmentation (`preprocess.train_crop`: one random
       native-pixel tile inside the body, flips), batching
    -> numpy dict batches; the train step's `DataParallel.shard_batch` puts
       them on the devices.

Why grain over the data source rather than `tfds.as_dataset`: `as_dataset`
needs TensorFlow at training time, which we do not install; grain reads the
same files by index, so shuffling is a permutation of indices (no shuffle
buffer), augmentation randomness is
a pure function of (seed, host, step position), and the iterator state is one
JSON-serialisable dict (`iterator.get_state()` / `set_state()`): training
resumes at exactly the batch it stopped at.

Sharding: host `process_index` of `process_count` reads examples
process_index, process_index + process_count, ... (disjoint shards). For
training every host keeps the same number of examples (the remainder of the
split is dropped each epoch, at most process_count - 1 examples), so all hosts
run the same number of steps per epoch. The global batch is
batch_size_per_host * process_count.

Evaluation does not batch examples: it scores whole slices tile by tile
(`inference.split`), reading this host's examples with `host_examples`.

Batches (numpy): 'image' (b, S, S, 1) float32 in [0, 1]; 'score' (b,) float32;
'rater_scores' (b, R) float32 when the dataset has it; every other numeric
feature (e.g. 'dose_fraction' (b,) float32, 'views' (b,) int32) passes
through, and 'index' (b,) int32 is the example's position in the split.
Text features (patient_id, file_name) do not pass: look them up by 'index'.
"""
from typing import Any, Iterator, Optional

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mdiqa_jax.data import mixture
from mdiqa_jax.data import preprocess

# Examples decoded and augmented concurrently per process.
_READ_THREADS = 2
_PREFETCH_BATCHES = 2


def prepare_dataset(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of `data_config.name`, building it if absent.

  Nothing is downloaded: the builders generate (synthetic) or read files from
  `data_config.manual_dir` (real data). Multi-host runs should build once
  beforehand into a shared `data_dir` (or let each host build its own local
  copy; the builders are deterministic). The project's builders are
  registered with TFDS by `mdiqa_jax.data`, which importing this module loads.
  """
  builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=data_config.manual_dir))
  return builder


def open_source(data_config: ml_collections.ConfigDict, split: str):
  """Random-access source of a split ('train', 'train[:900]', ...)."""
  return prepare_dataset(data_config).as_data_source(split)


def open_train_source(data_config: ml_collections.ConfigDict):
  """Random-access source of the training examples.

  The labeled `data_config.train_split`, mixed with the pseudo-labeled
  unlabeled slices of a selection file when `data_config.pseudo_labels`
  names one (written by mdiqa_jax.semi; see data/mixture.py).
  """
  labeled = open_source(data_config, data_config.train_split)
  selection_path = data_config.get('pseudo_labels')
  if not selection_path:
    return labeled
  return mixture.PseudoLabeledMixture(
      labeled, open_source(data_config, data_config.unlabeled_split),
      mixture.load_selection(selection_path))


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples of `split` (slicing syntax allowed)."""
  return len(open_source(data_config, split))


def _host(process_index: Optional[int], process_count: Optional[int],
          batch_size_per_host: int) -> tuple[int, int]:
  """Resolves and checks this host's position and the per-host batch size."""
  if batch_size_per_host < 1:
    raise ValueError(f'batch_size_per_host must be >= 1, got {batch_size_per_host}.')
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  return process_index, process_count


def _numeric_features(example: dict[str, Any]) -> dict[str, np.ndarray]:
  """Drops text features; scalars become 0-d float32 / int32 arrays.

  TFDS data sources return scalar features as Python floats and ints; the
  builders declare them float32 / int32, which is what batches carry.
  """
  features = {}
  for key, value in example.items():
    if isinstance(value, float):
      value = np.float32(value)
    elif isinstance(value, int) and not isinstance(value, bool):
      value = np.int32(value)
    value = np.asarray(value)
    if value.dtype.kind in 'biuf':
      features[key] = value
  return features


def _host_seed(seed: int, process_index: int) -> int:
  """Independent augmentation streams per host from one training seed."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def train_dataset_from_source(
    source, *, image_size: int, min_body_fraction: float,
    random_flip: bool, batch_size_per_host: int, seed: int, process_index: int,
    process_count: int) -> grain.MapDataset:
  """The infinite training dataset of batches over any random-access source.

  `source[i]` must return a dict with at least 'image' (H, W, 1) float32 in
  [0, 1] or uint8 (`preprocess.as_slice`) and 'score'. Kept separate from `create_train_iterator` so that other
  sources (e.g. a labeled split mixed with pseudo-labeled slices) can reuse it.
  """
  per_host = len(source) // process_count
  if per_host < batch_size_per_host:
    raise ValueError(
        f'The training split has {len(source)} examples: {per_host} per host '
        f'for {process_count} host(s), fewer than one batch of '
        f'{batch_size_per_host}.')

  def augment(indexed_example, rng: np.random.Generator):
    index, example = indexed_example
    features = _numeric_features(example)
    features['image'] = preprocess.train_crop(
        features['image'], image_size=image_size, min_body_fraction=min_body_fraction,
        random_flip=random_flip, rng=rng)
    features['index'] = np.int32(index)
    return features

  return (grain.MapDataset.range(len(source))
          .map(lambda index: (index, source[index]))
          .slice(slice(process_index, per_host * process_count, process_count))
          .shuffle(seed=seed)
          .repeat(None)
          .random_map(augment, seed=_host_seed(seed, process_index))
          .batch(batch_size_per_host, drop_remainder=True))


def _to_iterator(dataset: grain.MapDataset, num_workers: int) -> grain.DatasetIterator:
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES))
  if num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(iter_dataset)


def create_train_iterator(
    data_config: ml_collections.ConfigDict, *, batch_size_per_host: int,
    seed: int, process_index: Optional[int] = None,
    process_count: Optional[int] = None) -> grain.DatasetIterator:
  """Endless, reshuffled-every-epoch training batches of this host.

  Args:
    data_config: `config.data` (name, data_dir, manual_dir, train_split,
      image_size, train_min_body_fraction, random_flip, num_workers;
      pseudo_labels and unlabeled_split: `open_train_source`).
    batch_size_per_host: examples per batch on this host.
    seed: fixes the shuffle order and augmentations (same seed, same batches).
    process_index: this host (default jax.process_index()).
    process_count: number of hosts (default jax.process_count()).

  Returns:
    An iterator of numpy batches (module docstring). Its `get_state()` is a
    JSON-serialisable dict; `set_state(state)` on a fresh iterator created
    with the same arguments resumes with the next batch.
  """
  process_index, process_count = _host(process_index, process_count,
                                       batch_size_per_host)
  dataset = train_dataset_from_source(
      open_train_source(data_config),
      image_size=data_config.image_size,
      min_body_fraction=float(data_config.train_min_body_fraction),
      random_flip=data_config.random_flip,
      batch_size_per_host=batch_size_per_host, seed=seed,
      process_index=process_index, process_count=process_count)
  return _to_iterator(dataset, data_config.num_workers)


def example_pixel_mm(example: dict[str, Any],
                     data_config: ml_collections.ConfigDict) -> tuple[float, float]:
  """(row, column) spacing of a dataset example, mm: its 'pixel_mm' feature
  (square pixels), else the spacing assumed for the dataset (config.data.pixel_mm)."""
  value = example.get('pixel_mm')
  spacing = float(data_config.pixel_mm if value is None else value)
  return spacing, spacing


def host_examples(data_config: ml_collections.ConfigDict, split: str, *,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[tuple[int, dict]]:
  """This host's shard of a split, in order: (index in the split, example).

  Host process_index of process_count reads examples process_index,
  process_index + process_count, ...; every example appears on exactly one
  host.
  """
  process_index, process_count = _host(process_index, process_count, 1)
  source = open_source(data_config, split)
  for index in range(process_index, len(source), process_count):
    yield index, source[index]
