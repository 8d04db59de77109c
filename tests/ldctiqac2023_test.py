"""The real-data builder on a small fake copy of the released on-disk layout."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile

from mdiqa_jax.data import ldctiqac2023

_TRAIN_SCORES = {'0000.tif': 2.8, '0001.tif': 0.4, '0002.tif': 4.0,
                 '0003.tif': 0.0, '0004.tif': 1.6, '0005.tif': 3.2}
_TEST_SCORES = {'test_0007.tiff': 1.2, 'test_0042.tiff': 3.6}


def _slice(seed):
  """A 512 x 512 float32 slice in [0, 1], like the released ones."""
  return np.random.default_rng(seed).random((512, 512), dtype=np.float32)


def _write_split(root, folder, label_file, image_folder, scores):
  image_dir = os.path.join(root, folder, image_folder)
  os.makedirs(image_dir)
  images = {}
  for seed, name in enumerate(sorted(scores)):
    images[name] = _slice(seed)
    tifffile.imwrite(os.path.join(image_dir, name), images[name])
  with open(os.path.join(root, folder, label_file), 'w') as f:
    json.dump(scores, f)
  return images


def _write_train(root, scores=None):
  return _write_split(root, 'LDCTIQAG2023_train', 'train.json', 'image',
                      dict(_TRAIN_SCORES if scores is None else scores))


def _build(tmp_path, manual_dir):
  builder = ldctiqac2023.Ldctiqac2023(data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _read_all(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_builds_train_and_test_and_reads_back_exact_files(tmp_path):
  manual = tmp_path / 'manual'
  train_images = _write_train(str(manual))
  test_images = _write_split(str(manual), 'LDCTIQAC_test', 'test.json',
                             'images', _TEST_SCORES)
  builder = _build(tmp_path, manual)

  assert set(builder.info.splits) == {'train', 'test'}
  for split, images, scores in (('train', train_images, _TRAIN_SCORES),
                                ('test', test_images, _TEST_SCORES)):
    assert builder.info.splits[split].num_examples == len(scores)
    examples = _read_all(builder, split)
    assert sorted(e['file_name'].decode() for e in examples) == sorted(scores)
    for example in examples:
      name = example['file_name'].decode()
      assert example['image'].shape == (512, 512, 1)
      assert example['image'].dtype == np.float32
      np.testing.assert_array_equal(example['image'][..., 0], images[name])
      assert np.float32(example['score']) == np.float32(scores[name])


def test_train_only_layout_has_no_test_split_and_slices_partition_train(tmp_path):
  manual = tmp_path / 'manual'
  _write_train(str(manual))
  builder = _build(tmp_path, manual)
  assert set(builder.info.splits) == {'train'}
  head = [e['file_name'] for e in _read_all(builder, 'train[:4]')]
  tail = [e['file_name'] for e in _read_all(builder, 'train[4:]')]
  assert len(head) == 4 and len(tail) == 2
  assert sorted(head + tail) == sorted(n.encode() for n in _TRAIN_SCORES)


def _remove_label(root):
  path = os.path.join(root, 'LDCTIQAG2023_train', 'train.json')
  scores = dict(_TRAIN_SCORES)
  del scores['0003.tif']
  with open(path, 'w') as f:
    json.dump(scores, f)
  return '0003.tif'


def _remove_image(root):
  os.remove(os.path.join(root, 'LDCTIQAG2023_train', 'image', '0004.tif'))
  return '0004.tif'


def _overwrite_image(name, image):
  def corrupt(root):
    tifffile.imwrite(os.path.join(root, 'LDCTIQAG2023_train', 'image', name), image)
    return name
  return corrupt


def _garbage_image(root):
  with open(os.path.join(root, 'LDCTIQAG2023_train', 'image', '0002.tif'), 'wb') as f:
    f.write(b'this is not a tiff file')
  return '0002.tif'


def _nan_image():
  image = _slice(7)
  image[100, 200] = np.nan
  return image


def _score_out_of_range(root):
  path = os.path.join(root, 'LDCTIQAG2023_train', 'train.json')
  with open(path, 'w') as f:
    json.dump(dict(_TRAIN_SCORES, **{'0001.tif': 4.6}), f)
  return '0001.tif'


def _malformed_labels(root):
  path = os.path.join(root, 'LDCTIQAG2023_train', 'train.json')
  with open(path, 'w') as f:
    json.dump([['0000.tif', 2.8]], f)
  return 'train.json'


@pytest.mark.parametrize('corrupt,message', [
    (_remove_label, 'no label'),
    (_remove_image, 'image is missing'),
    (_overwrite_image('0005.tif', _slice(5)[:256]), r'shape \(256, 512\)'),
    (_overwrite_image('0001.tif', _nan_image()), 'NaN/inf'),
    (_overwrite_image('0000.tif', _slice(0) * 1000.0 - 500.0), 'windowed'),
    (_garbage_image, 'cannot read'),
    (_score_out_of_range, r'4\.6, expected a value in \[0\.0, 4\.0\]'),
    (_malformed_labels, 'expected a JSON object'),
])
def test_bad_file_stops_the_build_naming_the_file(tmp_path, corrupt, message):
  manual = tmp_path / 'manual'
  _write_train(str(manual))
  bad_name = corrupt(str(manual))
  with pytest.raises(ldctiqac2023.DataFileError) as error:
    _build(tmp_path, manual)
  assert bad_name in str(error.value)
  assert error.match(message)
