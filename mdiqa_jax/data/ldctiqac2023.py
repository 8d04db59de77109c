"""TFDS builder `ldctiqac2023`: the LDCTIQAC2023 challenge data, read from files.

The data (MICCAI 2023 Low-dose CT Perceptual Image Quality Assessment Grand
Challenge, Zenodo record 7833096, doi 10.5281/zenodo.7833096) cannot be
downloaded by this builder: download and unpack it by hand, then point tfds'
`manual_dir` (`config.data.manual_dir`) at the folder that holds:

  <manual_dir>/
    LDCTIQAG2023_train/            # the Zenodo archive, unpacked
      train.json                   # {"0000.tif": 2.8, "0001.tif": 0.4, ...}
      image/
        0000.tif ... 0999.tif      # 512 x 512 float32, windowed to [0, 1]
    LDCTIQAC_test/                 # optional: the organisers' test release
      test.json                    # {"<name>.tiff": score, ...}
      images/
        <name>.tiff                # 512 x 512 float32, windowed to [0, 1]

`train.json` is one flat JSON object mapping an image's file name (with its
extension) to the mean of five radiologists' scores, 0 (bad) to 4 (excellent)
in 0.2 steps. Layout confirmed from public loaders of the released files:
rajpurkarlab/ReX-MLE `rex-mle/rexmle/challenges/ldct-iqa/prepare.py` (reads
`LDCTIQAG2023_train/train.json` + `image/*.tif`, and `LDCTIQAC_test/test.json`
+ `images/*.tiff`, looking labels up by file name), and several training
scripts that read `LDCTIQAG2023_train/image/*.tif` with tifffile and look each
file name up in `train.json` (one documents the format as
{"0000.tif": 2.8}). The images are soft-tissue windowed (the challenge page
says width/level 350/40) and stored as float32 in [0, 1]. The TIFFs carry no pixel spacing. The model scores them at
native resolution (no resizing; mdiqa_jax/inference/) and takes their spacing to be
config.data.pixel_mm (configs/paper.py: 0.7 mm, typical of the Mayo abdominal
scans behind the challenge, 512 x 512 over a field of view of about 340-380
mm), so the examples have no 'pixel_mm' feature. A later
redistribution with patient-coded names (`L096_402_1_1`) and a
`test-ground-truth.json` grouped by test batch also circulates; it is not this
layout, and the builder reports its files as unlabeled/missing.

Splits:
  train: all labeled slices of `LDCTIQAG2023_train` (1000 in the release).
  test: the slices of `LDCTIQAC_test`, present only when that folder is.
A held-out split for model selection is a slice of train, e.g.
`train[:900]` / `train[900:]` (config.data.train_split / eval_split). TFDS
stores examples in an order fixed by a hash of their file names, so that
split is deterministic and pseudo-random; the released names carry no patient
id, so it is not patient-disjoint (slices of one patient may fall on both
sides), which flatters held-out scores a little.

Features: `image` (512, 512, 1) float32 in [0, 1], `score` float32 in [0, 4],
`file_name` text. The release holds no per-rater scores, dose or view counts,
and no patient ids, so those features of `ldct_iqa_synthetic` are absent (not
filled with placeholders that statistics could silently use).

Every file is checked as it is read; a bad file stops the build with an error
naming it: a malformed label file, an image without a label, a label without
an image, an unreadable image, a shape other than 512 x 512, NaN/inf pixels,
pixels outside [0, 1], a score outside [0, 4].
"""
import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tifffile

IMAGE_SIZE = 512
SCORE_RANGE = (0.0, 4.0)
# Float32 windowing can overshoot [0, 1] by rounding; larger excursions mean
# the file was not windowed (e.g. HU values), which is an error.
_PIXEL_TOLERANCE = 1e-4

_LAYOUT = {
    # split: (folder, label file, image folder, image extension)
    'train': ('LDCTIQAG2023_train', 'train.json', 'image', '.tif'),
    'test': ('LDCTIQAC_test', 'test.json', 'images', '.tiff'),
}


class DataFileError(ValueError):
  """A file of the manual download is missing, unreadable or out of spec."""


def read_labels(label_path: str) -> dict[str, float]:
  """Reads a flat {file name: score} JSON object, checking every score.

  Raises:
    DataFileError: naming `label_path` (and the entry) when the file is not a
      JSON object of numbers in [0, 4].
  """
  try:
    with open(label_path, encoding='utf-8') as f:
      labels = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataFileError(f'{label_path}: cannot read the label file: {e}') from e
  if not isinstance(labels, dict):
    raise DataFileError(
        f'{label_path}: expected a JSON object {{file name: score}}, got '
        f'{type(labels).__name__}.')
  checked = {}
  for name, score in labels.items():
    if isinstance(score, bool) or not isinstance(score, (int, float)):
      raise DataFileError(
          f'{label_path}: score of {name!r} is {score!r}, expected a number.')
    if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
      raise DataFileError(
          f'{label_path}: score of {name!r} is {score}, expected a value in '
          f'[{SCORE_RANGE[0]}, {SCORE_RANGE[1]}].')
    checked[name] = float(score)
  return checked


def read_slice(image_path: str) -> np.ndarray:
  """Reads one released slice as (512, 512) float32 in [0, 1].

  Raises:
    DataFileError: naming `image_path` when it cannot be read as a TIFF, is
      not 512 x 512, or holds non-finite values or values outside [0, 1].
  """
  try:
    image = tifffile.imread(image_path)
  except Exception as e:  # tifffile raises many types for corrupt files.
    raise DataFileError(f'{image_path}: cannot read as a TIFF image: {e}') from e
  image = np.squeeze(np.asarray(image))
  if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataFileError(
        f'{image_path}: image shape {np.asarray(image).shape}, expected '
        f'({IMAGE_SIZE}, {IMAGE_SIZE}).')
  if not np.issubdtype(image.dtype, np.floating):
    raise DataFileError(
        f'{image_path}: pixel type {image.dtype}, expected float32 windowed to '
        '[0, 1].')
  image = image.astype(np.float32)
  finite = np.isfinite(image)
  if not finite.all():
    raise DataFileError(
        f'{image_path}: {int((~finite).sum())} NaN/inf pixels.')
  low, high = float(image.min()), float(image.max())
  if low < -_PIXEL_TOLERANCE or high > 1.0 + _PIXEL_TOLERANCE:
    raise DataFileError(
        f'{image_path}: pixel values in [{low}, {high}], expected an image '
        'windowed to [0, 1].')
  return np.clip(image, 0.0, 1.0)


def labeled_files(manual_dir: str, split: str) -> list[tuple[str, str, float]]:
  """Pairs each image of a split with its label, in file name order.

  Returns:
    [(file name, image path, score)], one per image.

  Raises:
    DataFileError: naming the file when an image has no label or a label has
      no image.
  """
  folder, label_file, image_folder, extension = _LAYOUT[split]
  label_path = os.path.join(manual_dir, folder, label_file)
  image_dir = os.path.join(manual_dir, folder, image_folder)
  labels = read_labels(label_path)
  if not os.path.isdir(image_dir):
    raise DataFileError(f'{image_dir}: image folder not found (expected '
                        f'{folder}/{image_folder}/*{extension}).')
  image_names = sorted(
      name for name in os.listdir(image_dir) if name.endswith(extension))
  unlabeled = [name for name in image_names if name not in labels]
  if unlabeled:
    raise DataFileError(
        f'{os.path.join(image_dir, unlabeled[0])}: no label in {label_path} '
        f'({len(unlabeled)} unlabeled image(s)).')
  missing = sorted(set(labels) - set(image_names))
  if missing:
    raise DataFileError(
        f'{os.path.join(image_dir, missing[0])}: labeled in {label_path} but '
        f'the image is missing ({len(missing)} missing image(s)).')
  return [(name, os.path.join(image_dir, name), labels[name])
          for name in image_names]


class Ldctiqac2023(tfds.core.GeneratorBasedBuilder):
  """LDCTIQAC2023 challenge slices and radiologist scores (manual download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Train release (Zenodo 7833096) and test release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download LDCTIQAG2023_train from https://zenodo.org/record/7833096, unpack it
  into the manual folder (giving <manual_dir>/LDCTIQAG2023_train/train.json and
  <manual_dir>/LDCTIQAG2023_train/image/*.tif), and optionally unpack the test
  release next to it as <manual_dir>/LDCTIQAC_test/{test.json,images/*.tiff}.
  Pass the folder as config.data.manual_dir.
  """

  def __init__(self, *, file_format='array_record', **kwargs):
    # Array records are random-access sources for grain, without TensorFlow.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32),
            'score': tfds.features.Scalar(dtype=np.float32),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'score'),
        homepage='https://ldctiqac2023.grand-challenge.org/ldctiqac2023/',
        citation="""@dataset{lee_2023_7833096,
  author = {Lee, Wonkyeong and Wagner, Fabian and Maier, Andreas and
            Wang, Adam and Baek, Jongduk and Hsieh, Scott S. and
            Choi, Jang-Hwan},
  title = {Low-dose Computed Tomography Perceptual Image Quality Assessment
           Grand Challenge Dataset (MICCAI 2023)},
  publisher = {Zenodo}, year = 2023, doi = {10.5281/zenodo.7833096}}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits = {}
    for split, (folder, label_file, _, _) in _LAYOUT.items():
      if split == 'train' or os.path.exists(
          os.path.join(manual_dir, folder, label_file)):
        splits[split] = self._generate_examples(labeled_files(manual_dir, split))
    return splits

  def _generate_examples(
      self, files: list[tuple[str, str, float]]) -> Iterator[tuple[str, dict]]:
    for name, path, score in files:
      yield name, {
          'image': read_slice(path)[..., None],
          'score': np.float32(score),
          'file_name': name,
      }
