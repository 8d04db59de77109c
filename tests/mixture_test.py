"""data/mixture: labeled + pseudo-labeled slices through the real training pipeline."""
import os

import numpy as np
import pytest

from mdiqa_jax.data import mixture
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import preprocess

import tiny_train_config


@pytest.fixture(scope='module')
def data_dir(tiny_data_dir):
  return tiny_data_dir


def _data_config(data_dir, selection_path):
  config = tiny_train_config.get_config(data_dir)
  config.data.random_flip = False
  config.data.pseudo_labels = selection_path
  return config.data


def test_soft_selection_batches_carry_targets_weights_and_unlabeled_images(
    data_dir, tmp_path):
  num_bins, num_scales = 21, 3
  rng = np.random.default_rng(0)
  labeled = pipeline.open_source(_data_config(data_dir, None), 'train')
  unlabeled = pipeline.open_source(_data_config(data_dir, None), 'unlabeled')
  selection = {'index': np.array([3, 1]), 'score': np.array([2.5, 0.5], np.float32),
               'weight': np.array([0.3, 0.3], np.float32),
               'target_probs': rng.dirichlet(np.ones(num_bins), (2, num_scales))}
  labeled_targets = rng.dirichlet(np.ones(num_bins), (len(labeled), num_scales))
  path = str(tmp_path / 'selection.npz')
  mixture.write_selection(path, selection, labeled_targets)
  assert os.listdir(tmp_path) == ['selection.npz']

  data_config = _data_config(data_dir, path)
  source = pipeline.open_train_source(data_config)
  assert len(source) == len(labeled) + 2
  iterator = pipeline.create_train_iterator(data_config, batch_size_per_host=len(source),
                                            seed=0, process_index=0, process_count=1)
  batch = next(iterator)  # One batch = the whole (shuffled) mixture.
  assert sorted(batch) == ['image', 'index', 'is_pseudo', 'score', 'target_probs',
                           'weight']
  for row, position in enumerate(batch['index']):
    if position < len(labeled):
      example = labeled[int(position)]
      np.testing.assert_allclose(batch['score'][row], example['score'], rtol=1e-6)
      assert batch['weight'][row] == 1.0 and not batch['is_pseudo'][row]
      np.testing.assert_allclose(batch['target_probs'][row], labeled_targets[position],
                                 rtol=1e-6)
    else:
      j = int(position) - len(labeled)
      example = unlabeled[int(selection['index'][j])]
      assert batch['score'][row] == selection['score'][j]
      assert batch['weight'][row] == np.float32(0.3) and batch['is_pseudo'][row]
      np.testing.assert_allclose(batch['target_probs'][row], selection['target_probs'][j],
                                 rtol=1e-6)
    # Tiles of the slice's own side: the whole slice, pixel for pixel.
    assert np.shape(example['image'])[:2] == (data_config.image_size,) * 2
    np.testing.assert_array_equal(batch['image'][row, ..., 0],
                                  preprocess.as_slice(example['image']))
  assert batch['is_pseudo'].sum() == 2


def test_hard_selection_has_no_target_probs(data_dir, tmp_path):
  path = str(tmp_path / 'selection.npz')
  mixture.write_selection(path, {'index': np.array([0]), 'score': np.array([1.0]),
                                 'weight': np.array([1.0])})
  source = pipeline.open_train_source(_data_config(data_dir, path))
  assert 'target_probs' not in source[len(source) - 1]
  assert 'target_probs' not in source[0]


def test_bad_selections_are_rejected(data_dir, tmp_path):
  with pytest.raises(ValueError, match='labeled_target_probs'):
    mixture.write_selection(str(tmp_path / 'a.npz'), {
        'index': np.array([0]), 'score': np.array([1.0]), 'weight': np.array([1.0]),
        'target_probs': np.ones((1, 3, 21)) / 21})
  path = str(tmp_path / 'out_of_range.npz')
  mixture.write_selection(path, {'index': np.array([99]), 'score': np.array([1.0]),
                                 'weight': np.array([1.0])})
  with pytest.raises(ValueError, match='unlabeled'):
    pipeline.open_train_source(_data_config(data_dir, path))
  with pytest.raises(FileNotFoundError, match='config.data.pseudo_labels'):
    pipeline.open_train_source(_data_config(data_dir, str(tmp_path / 'missing.npz')))
