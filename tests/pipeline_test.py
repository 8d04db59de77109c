"""Input pipeline: determinism, host sharding, resumption, evaluation shards."""
import json
import os

from absl import flags
import numpy as np
import pytest
import tifffile

from mdiqa_jax import config_base
from mdiqa_jax.data import pipeline

_NUM_SLICES = 11  # Odd: uneven host shards and a padded last eval batch.


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  """config.data for a fake ldctiqac2023 copy of 11 random 512 x 512 slices."""
  root = tmp_path_factory.mktemp('pipeline')
  image_dir = root / 'manual' / 'LDCTIQAG2023_train' / 'image'
  os.makedirs(image_dir)
  rng = np.random.default_rng(0)
  scores = {}
  for i in range(_NUM_SLICES):
    tifffile.imwrite(image_dir / f'{i:04d}.tif',
                     rng.random((512, 512), dtype=np.float32))
    scores[f'{i:04d}.tif'] = round(float(rng.integers(0, 21)) * 0.2, 1)
  with open(image_dir.parent / 'train.json', 'w') as f:
    json.dump(scores, f)
  config = config_base.base_config().data
  config.name = 'ldctiqac2023'
  config.data_dir = str(root / 'tfds')
  config.manual_dir = str(root / 'manual')
  config.image_size = 128  # 128-pixel native tiles of the 512-pixel slices.
  return config


@pytest.fixture(scope='module')
def source(data_config):
  return pipeline.open_source(data_config, 'train')


def _take(iterator, num_batches):
  return [next(iterator) for _ in range(num_batches)]


def _train(data_config, seed=0, batch=4, process_index=0, process_count=1):
  return pipeline.create_train_iterator(
      data_config, batch_size_per_host=batch, seed=seed,
      process_index=process_index, process_count=process_count)


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_prepare_dataset_builds_once_and_counts_examples(data_config):
  builder = pipeline.prepare_dataset(data_config)
  assert builder.is_prepared()
  assert pipeline.num_examples(data_config, 'train') == _NUM_SLICES
  assert pipeline.num_examples(data_config, 'train[:8]') == 8
  assert pipeline.num_examples(data_config, 'train[8:]') == 3


def test_train_batches_have_documented_shapes_and_dtypes(data_config):
  batch = next(_train(data_config))
  assert set(batch) == {'image', 'score', 'index'}
  assert batch['image'].shape == (4, 128, 128, 1)
  assert batch['image'].dtype == np.float32
  assert batch['score'].shape == (4,) and batch['score'].dtype == np.float32
  assert batch['index'].dtype == np.int32


def test_same_seed_gives_same_batches_and_another_seed_differs(data_config):
  first = _take(_train(data_config, seed=7), 6)
  _assert_same_batches(first, _take(_train(data_config, seed=7), 6))
  other = _take(_train(data_config, seed=8), 6)
  assert not all(np.array_equal(a['index'], b['index'])
                 for a, b in zip(first, other))


def test_every_epoch_is_a_new_permutation_of_the_split(data_config):
  # 11 examples, batches of 1: epoch e is stream positions [11e, 11e + 11).
  stream = np.concatenate(
      [b['index'] for b in _take(_train(data_config, batch=1), 3 * _NUM_SLICES)])
  epochs = stream.reshape(3, _NUM_SLICES)
  for epoch in epochs:
    assert sorted(epoch) == list(range(_NUM_SLICES))
  assert len({tuple(epoch) for epoch in epochs}) == 3


def test_hosts_read_disjoint_equal_shards(data_config):
  per_host = _NUM_SLICES // 2
  shards = []
  for host in range(2):
    stream = np.concatenate([b['index'] for b in _take(
        _train(data_config, batch=1, process_index=host, process_count=2),
        2 * per_host)])
    first_epoch, second_epoch = stream[:per_host], stream[per_host:]
    assert sorted(first_epoch) == sorted(second_epoch)
    assert len(set(first_epoch)) == per_host
    shards.append(set(first_epoch))
  assert not shards[0] & shards[1]
  assert len(shards[0] | shards[1]) == 2 * per_host


@pytest.mark.parametrize('consumed', [0, 2, 5])
def test_resuming_from_json_state_continues_with_the_same_batches(
    data_config, consumed):
  iterator = _train(data_config, seed=3)
  _take(iterator, consumed)
  state = json.dumps(iterator.get_state())
  expected = _take(iterator, 4)
  restored = _train(data_config, seed=3)
  restored.set_state(json.loads(state))
  _assert_same_batches(expected, _take(restored, 4))


def _match_window(image, out):
  """Finds (top, left, flip) with out == flip(image[window]), or None."""
  side = out.shape[0]
  for flip, unflipped in enumerate([out, out[::-1], out[:, ::-1], out[::-1, ::-1]]):
    for top, left in np.argwhere(image == unflipped[0, 0]):
      if np.array_equal(image[top:top + side, left:left + side], unflipped):
        return top, left, flip
  return None


def test_augmentation_only_crops_and_flips_stored_pixels(data_config, source):
  found = set()
  for batch in _take(_train(data_config, seed=5), 6):
    for image, score, index in zip(batch['image'], batch['score'], batch['index']):
      stored = source[int(index)]
      assert score == np.float32(stored['score'])
      match = _match_window(stored['image'][..., 0], image[..., 0])
      assert match is not None, 'a training image is not a flipped window'
      found.add(match)
  assert len({flip for _, _, flip in found}) > 1
  assert len({(top, left) for top, left, _ in found}) > 10


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_host_examples_cover_every_example_once(data_config, source, process_count):
  seen = []
  for host in range(process_count):
    for index, example in pipeline.host_examples(data_config, 'train', process_index=host,
                                                 process_count=process_count):
      assert index % process_count == host
      np.testing.assert_array_equal(example['image'], source[index]['image'])
      seen.append(index)
  assert sorted(seen) == list(range(_NUM_SLICES))


def test_example_spacing_is_its_feature_else_the_assumed_one(data_config):
  assert pipeline.example_pixel_mm({'pixel_mm': 0.62}, data_config) == (
      pytest.approx(0.62), pytest.approx(0.62))
  assert pipeline.example_pixel_mm({}, data_config) == (data_config.pixel_mm,) * 2


def test_too_small_split_for_a_batch_is_an_error(data_config):
  with pytest.raises(ValueError, match='fewer than one batch'):
    _train(data_config, batch=6, process_index=0, process_count=2)


def test_worker_processes_give_the_same_batches_and_resumable_state(data_config):
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (absl.app.run parses them).
  expected = _take(_train(data_config, seed=2), 6)
  config = data_config.copy_and_resolve_references()
  config.num_workers = 1
  iterator = _train(config, seed=2)
  first = _take(iterator, 3)
  state = json.dumps(iterator.get_state())
  _assert_same_batches(expected, first + _take(iterator, 3))
  iterator.close()
  restored = _train(config, seed=2)
  restored.set_state(json.loads(state))
  _assert_same_batches(expected[3:], _take(restored, 3))
  restored.close()


@pytest.mark.parametrize('arguments,message', [
    (dict(process_index=2, process_count=2), r'not in \[0, process_count=2\)'),
    (dict(process_index=-1, process_count=1), r'not in \[0, process_count=1\)'),
])
def test_bad_host_arguments_are_rejected_before_reading(data_config, arguments, message):
  with pytest.raises(ValueError, match=message):
    next(pipeline.host_examples(data_config, 'train', **arguments))
