"""The synthetic TFDS builder: registration, build, read-back, determinism."""
import dataclasses
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import mdiqa_jax.data  # pylint: disable=unused-import  (registers the builders)
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import synthetic
from mdiqa_jax.data import synthetic_builder

# Smallest spec the simulator runs quickly: every split, every kind of example
# (coarse pixels, so the phantom fits in 32 px).
_TINY_SPEC = dataclasses.replace(
    synthetic.CLINICAL_SPEC, image_size=32, num_views_full=48,
    split_patients={'train': 2, 'validation': 1, 'test': 1, 'unlabeled': 1},
    slices_per_patient=1, dose_fractions=(1.0, 0.25), sparse_views=(16,),
    pixel_mm_range=(9.0, 15.0), seed=3)


def _build(tmp_path, name, num_processes):
  builder = synthetic_builder.LdctIqaSynthetic(
      config=synthetic_builder.SyntheticConfig(name=name, spec=_TINY_SPEC),
      data_dir=str(tmp_path / name), num_processes=num_processes)
  builder.download_and_prepare()
  return builder


def _read_all(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """The tiny spec built with two generating processes."""
  return _build(tmp_path_factory.mktemp('synthetic'), 'tiny', num_processes=2)


def test_importing_the_package_registers_both_configs(tmp_path):
  clinical = tfds.builder('ldct_iqa_synthetic/clinical', data_dir=str(tmp_path))
  assert clinical.info.features['image'].shape == (512, 512, 1)
  assert clinical.info.features['image'].np_dtype == np.uint8
  assert clinical.info.features['rater_scores'].shape == (
      synthetic.CLINICAL_SPEC.num_raters,)
  assert clinical.builder_config.spec == synthetic.CLINICAL_SPEC
  assert str(clinical.info.version) == '2.2.0'
  default = tfds.builder('ldct_iqa_synthetic', data_dir=str(tmp_path))
  assert default.builder_config.name == 'clinical'
  challenge = tfds.builder('ldct_iqa_synthetic/challenge', data_dir=str(tmp_path))
  assert challenge.info.features['image'].shape == (512, 512, 1)
  assert challenge.builder_config.spec == synthetic.CHALLENGE_SPEC


def test_split_sizes_shapes_and_dtypes(built):
  expected_sizes = synthetic.split_sizes(_TINY_SPEC)
  assert set(built.info.splits) == set(synthetic.SPLITS)
  for split in synthetic.SPLITS:
    examples = _read_all(built, split)
    assert len(examples) == expected_sizes[split]
    for example in examples:
      assert isinstance(example['image'], np.ndarray)
      assert example['image'].shape == (32, 32, 1)
      assert example['image'].dtype == np.uint8
      assert example['rater_scores'].shape == (_TINY_SPEC.num_raters,)
      assert example['rater_scores'].dtype == np.float32
      for name in ('score', 'dose_fraction', 'pixel_mm', 'slice_thickness_mm'):
        assert isinstance(example[name], float), name
      assert _TINY_SPEC.pixel_mm_range[0] <= example['pixel_mm'] <= (
          _TINY_SPEC.pixel_mm_range[1])
      assert example['kernel'].decode() in _TINY_SPEC.kernels
      assert isinstance(example['views'], int)
      assert isinstance(example['slice_index'], int)
      assert isinstance(example['patient_id'], bytes)


def _identity(example):
  return (np.asarray(example['patient_id']).astype(str).item(),
          int(example['slice_index']), round(float(example['dose_fraction']), 6),
          int(example['views']))


def test_stored_examples_equal_the_simulator_output(built):
  for split in synthetic.SPLITS:
    stored = {_identity(e): e for e in _read_all(built, split)}
    generated = [example for _, example in synthetic.generate_split(_TINY_SPEC, split)]
    assert len(stored) == len(generated)
    for example in generated:
      match = stored[_identity(example)]
      np.testing.assert_array_equal(match['image'], example['image'])
      np.testing.assert_array_equal(match['rater_scores'], example['rater_scores'])
      assert np.float32(match['score']) == np.float32(example['score'])
      assert np.float32(match['pixel_mm']) == example['pixel_mm']
      assert match['kernel'].decode() == example['kernel']


def test_images_decode_to_uint8_without_tensorflow(built):
  """The PNG images come back from the data source as uint8 arrays, and
  neither building nor reading imported TensorFlow."""
  image = built.as_data_source('test')[0]['image']
  assert isinstance(image, np.ndarray) and image.dtype == np.uint8
  assert 'tensorflow' not in sys.modules


def test_patients_are_disjoint_across_splits(built):
  patients = {split: {e['patient_id'] for e in _read_all(built, split)}
              for split in synthetic.SPLITS}
  for i, first in enumerate(synthetic.SPLITS):
    for second in synthetic.SPLITS[i + 1:]:
      assert not patients[first] & patients[second], (first, second)


def test_build_is_deterministic_whatever_the_number_of_processes(built, tmp_path):
  serial = _build(tmp_path, 'tiny', num_processes=1)
  for split in synthetic.SPLITS:
    for a, b in zip(_read_all(built, split), _read_all(serial, split), strict=True):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_pipeline_batches_carry_every_numeric_feature(built):
  dataset = pipeline.train_dataset_from_source(
      built.as_data_source('train'), image_size=32, min_body_fraction=0.0,
      random_flip=True, batch_size_per_host=2, seed=0,
      process_index=0, process_count=1)
  batch = dataset[0]
  assert set(batch) == {'image', 'score', 'rater_scores', 'dose_fraction',
                        'views', 'pixel_mm', 'slice_thickness_mm',
                        'slice_index', 'index'}
  assert batch['image'].shape == (2, 32, 32, 1)
  assert batch['rater_scores'].shape == (2, _TINY_SPEC.num_raters)
  assert batch['rater_scores'].dtype == np.float32
  assert batch['dose_fraction'].dtype == np.float32
  assert batch['views'].dtype == np.int32
  np.testing.assert_allclose(batch['score'], batch['rater_scores'].mean(axis=1),
                             rtol=1e-6)
