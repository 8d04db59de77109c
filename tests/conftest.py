"""Shared test fixtures: CT DICOM files written with pydicom alone, a tiny checkpoint,
the tiny synthetic dataset and a compilation cache for child processes."""
import functools
import os
import types

import jax
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid


def _file_dataset(sop_class: str) -> Dataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = 'CT'
  ds.PatientID = 'TEST'
  ds.StudyInstanceUID = '1.2.826.0.1.3680043.8.498.1'
  return ds


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
  """Stores int16 / uint16 values (frames, rows, cols) or (rows, cols)."""
  ds.Rows, ds.Columns = stored.shape[-2:]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated = 16
  ds.BitsStored = 16
  ds.HighBit = 15
  ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
  ds.PixelData = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder('<'))).tobytes()


@pytest.fixture
def write_ct_dicom():
  """write(path, stored (H, W) int16/uint16, slope, intercept, **attributes)."""
  def write(path, stored, slope=1.0, intercept=-1024.0, *, z_mm=0.0, instance_number=1,
            series_uid='1.2.826.0.1.3680043.8.498.2', rescale=True, **attributes):
    ds = _file_dataset(CTImageStorage)
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -100.0, z_mm]
    if rescale:
      ds.RescaleSlope = slope
      ds.RescaleIntercept = intercept
    for keyword, value in attributes.items():
      setattr(ds, keyword, value)
    _set_pixels(ds, np.asarray(stored))
    ds.save_as(path, enforce_file_format=True)
    return path
  return write


@pytest.fixture
def write_enhanced_ct_dicom():
  """write(path, stored (F, H, W) int16, slopes (F,), intercepts (F,), z_mm (F,)).

  An Enhanced CT multi-frame file with per-frame rescale and position.
  """
  def write(path, stored, slopes, intercepts, z_mm):
    ds = _file_dataset(EnhancedCTImageStorage)
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = stored.shape[0]
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for slope, intercept, z in zip(slopes, intercepts, z_mm):
      group = Dataset()
      transform = Dataset()
      transform.RescaleSlope = slope
      transform.RescaleIntercept = intercept
      transform.RescaleType = 'HU'
      group.PixelValueTransformationSequence = Sequence([transform])
      position = Dataset()
      position.ImagePositionPatient = [-100.0, -100.0, z]
      group.PlanePositionSequence = Sequence([position])
      frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _set_pixels(ds, np.asarray(stored))
    ds.save_as(path, enforce_file_format=True)
    return path
  return write


@pytest.fixture
def write_dicom_without_pixels():
  """write(path): a valid DICOM file (a structured report) with no image."""
  def write(path):
    ds = _file_dataset('1.2.840.10008.5.1.4.1.1.88.11')  # Basic Text SR Storage.
    ds.Modality = 'SR'
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path
  return write



def tiny_config():
  """The default config with a small, fast-compiling model on 64-pixel inputs."""
  from mdiqa_jax.config_base import base_config  # pylint: disable=g-import-not-at-top
  config = base_config()
  config.data.image_size = 64
  config.eval_batch_size = 4
  config.model.vit.width = 32
  config.model.vit.depth = 2
  config.model.vit.feature_blocks = (0, 1)
  config.model.convnext.widths = (8, 16, 32, 64)
  config.model.align.width = 16
  config.model.head.hidden = 16
  return config


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
  """A training workdir holding one checkpoint (step 1) of a freshly initialised tiny model.

  Written the way training writes it (`checkpointing.save` of a TrainState,
  `save_config`). Returns a namespace: workdir, step_dir, config, params.
  """
  from mdiqa_jax import checkpointing, models, optim, train_step  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('workdir'))
  model = models.create_model(config)
  # Random values in the layout init gives (eval_shape traces without compiling
  # the init, which takes a minute on a loaded 2-core machine).
  shapes = jax.eval_shape(functools.partial(train_step.init_params, model,
                                            image_size=config.data.image_size),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def random_leaf(path, leaf):
    if leaf.ndim >= 2:  # Kernels and embeddings: fan-in scaled normal.
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    if jax.tree_util.keystr(path).endswith("['scale']"):  # LayerNorm scales.
      return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    return (0.02 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(random_leaf, shapes)
  tx, _ = optim.create_optimizer(config.optim, models.param_groups(params), total_steps=10)
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(2), use_ema=False)
  manager = checkpointing.create_manager(workdir, keep_last=1, keep_best=1, async_save=False)
  checkpointing.save(manager, 1, state, metrics={'srocc': 0.5})
  manager.wait_until_finished()
  manager.close()
  checkpointing.save_config(config, workdir)
  return types.SimpleNamespace(
      workdir=workdir, step_dir=os.path.join(workdir, checkpointing.CHECKPOINT_DIR, '1'),
      config=config, params=jax.device_get(params))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data_dir holding 'ldct_iqa_synthetic/tiny' (tests/tiny_train_config.py)."""
  import tiny_train_config  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('tfds'))
  tiny_train_config.build_tiny_dataset(path)
  return path


@pytest.fixture(scope='session')
def compilation_cache(tmp_path_factory):
  """A JAX compilation cache directory shared by the child processes of a test session."""
  return str(tmp_path_factory.mktemp('jax_cache'))
