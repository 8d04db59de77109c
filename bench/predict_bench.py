r"""Throughput of mdiqa-predict on CPU: slices per second, end to end and by stage.

For each --format (npy and dicom by default), writes --num_slices synthetic
512 x 512 CT slices at 0.75 mm (int16 HU, a noisy soft-tissue ellipse in air
filling the field of view like an abdomen) as one file each, then times with
the default config's model (random weights unless --checkpoint is given;
speed does not depend on the weights):
  end_to_end   predict.predict_paths over the folder (listing, reading,
               windowing, native tiles over the whole body, jitted inference
               in tile batches, pooling), after a warm-up run that compiles
               every batch shape;
  read         reading + windowing + `preprocess.cut_tiles` only;
  inference    the jitted model on full tile batches only (tiles/s).
Prints a summary and writes bench/results/predict_bench.json.

  python bench/predict_bench.py [--num_slices=64] [--batch_size=32] [--format=npy]
"""
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

import bench_common
from mdiqa_jax import io as ct_io
from mdiqa_jax import models
from mdiqa_jax import predict
from mdiqa_jax import slice_scoring
from mdiqa_jax import train_step
from mdiqa_jax.config_base import base_config
from mdiqa_jax.data import preprocess

_NUM_SLICES = flags.DEFINE_integer('num_slices', 64, 'Slices scored per timed run.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Tiles per jitted call.')
_FORMATS = flags.DEFINE_multi_enum('format', ['npy', 'dicom'], ['npy', 'dicom'],
                                   'File formats of the slices, each timed separately.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'Score with this checkpoint instead of random weights.')
_OUTPUT = flags.DEFINE_string(
    'output', os.path.join(os.path.dirname(__file__), 'results', 'predict_bench.json'),
    'JSON file to write.')

_SIDE = 512


def _slice_hu(rng: np.random.Generator) -> np.ndarray:
  rows, cols = np.mgrid[:_SIDE, :_SIDE]
  inside = ((rows - 256) / 200.0) ** 2 + ((cols - 256) / 230.0) ** 2 < 1
  return np.round(np.where(inside, 40.0 + rng.normal(0.0, 30.0, (_SIDE, _SIDE)),
                           -1000.0)).astype(np.int16)


def _write_dicom(path: str, hu: np.ndarray, number: int) -> None:
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # pylint: disable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CTImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = 'CT', '1.2.3.4', number
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.ImagePositionPatient = [0.0, 0.0, float(number)]
  ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
  ds.PixelSpacing = [0.75, 0.75]
  ds.Rows = ds.Columns = _SIDE
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
  ds.BitsAllocated = ds.BitsStored = 16
  ds.HighBit, ds.PixelRepresentation = 15, 0
  ds.PixelData = (hu.astype(np.int32) + 1024).astype('<u2').tobytes()
  ds.save_as(path, enforce_file_format=True)


def _write_slices(folder: str, count: int, file_format: str) -> None:
  rng = np.random.default_rng(0)
  for i in range(count):
    hu = _slice_hu(rng)
    if file_format == 'npy':
      np.save(os.path.join(folder, f'{i:04d}.npy'), hu)
    else:
      _write_dicom(os.path.join(folder, f'{i:04d}.dcm'), hu, i)


def _timed(function):
  start = time.perf_counter()
  result = function()
  return time.perf_counter() - start, result


def main(argv):
  del argv
  if _CHECKPOINT.value:
    config, params = predict.load_checkpoint(_CHECKPOINT.value)
  else:
    config = base_config()  # What configs/default.py returns.
    model = models.create_model(config)
    params = jax.device_get(jax.jit(train_step.init_params, static_argnums=(0, 2))(
        model, jax.random.PRNGKey(0), config.data.image_size))
  preprocessing = predict.Preprocessing.from_config(config)
  predict_fn = slice_scoring.make_tile_predict_fn(models.create_model(config))
  batch_size, count = _BATCH_SIZE.value, _NUM_SLICES.value

  by_format = {}
  for file_format in _FORMATS.value:
    with tempfile.TemporaryDirectory() as folder:
      _write_slices(folder, count, file_format)
      run = lambda: predict.predict_paths(  # pylint: disable=cell-var-from-loop
          config, params, [folder], preprocessing=preprocessing, batch_size=batch_size,
          predict_fn=predict_fn)
      run()  # Compiles every batch shape the timed run uses.
      end_to_end_s, (rows, failures) = _timed(run)
      assert len(rows) == count and not failures, failures

      def read_all():
        found = ct_io.find_inputs([folder])  # pylint: disable=cell-var-from-loop
        return [preprocess.cut_tiles(ct_io.to_unit(s), tile_size=preprocessing.tile_size,
                                     patch_size=preprocessing.patch_size,
                                     min_body_fraction=preprocessing.min_body_fraction).images
                for path, kind in found.files for s in ct_io.read_file(path, kind)]
      read_s, views = _timed(read_all)
      tiles_per_slice = sum(len(v) for v in views) / len(views)
    by_format[file_format] = {'end_to_end_slices_per_s': count / end_to_end_s,
                              'read_preprocess_slices_per_s': count / read_s}

  batch = jax.device_put(np.concatenate(views)[:batch_size])
  jax.block_until_ready(predict_fn(params, batch))
  repeats = max(1, count // batch_size)
  inference_s, _ = _timed(lambda: [jax.block_until_ready(predict_fn(params, batch))
                                   for _ in range(repeats)])

  results = {
      **bench_common.machine_info(),
      'slice_side': _SIDE,
      'num_slices': count,
      'batch_size': batch_size,
      'tile_size': preprocessing.tile_size,
      'tiles_per_slice': tiles_per_slice,
      'num_params': models.count_params(params),
      'weights': _CHECKPOINT.value or 'random (default config)',
      'inference_tiles_per_s': repeats * batch_size / inference_s,
      'by_format': by_format,
  }
  print(f"{results['device']} ({results['cpu_count']} CPUs), {count} slices "
        f"{_SIDE}x{_SIDE}, {tiles_per_slice:.1f} tiles of {preprocessing.tile_size} px per "
        f"slice, batch {batch_size}: inference only {results['inference_tiles_per_s']:.1f} "
        "tiles/s")
  for file_format, rates in by_format.items():
    print(f"  {file_format:6s} end to end {rates['end_to_end_slices_per_s']:7.1f} slices/s, "
          f"read + preprocess {rates['read_preprocess_slices_per_s']:7.1f} slices/s")
  bench_common.write_results(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
