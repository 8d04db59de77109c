"""Tiny MD-IQA on a tiny synthetic dataset: the training tests' config.

The model is the ViT-only ablation with the distribution head: the deformable
alignment multiplies compile time by about four, and these tests are about the
training machinery (tests/mdiqa_test.py covers the full model).

`--config=tests/tiny_train_config.py:DATA_DIR` reads the dataset
'ldct_iqa_synthetic/tiny' that `build_tiny_dataset(DATA_DIR)` wrote there.
"""
import dataclasses

from mdiqa_jax.config_base import base_config

IMAGE_SIZE = 32
DATASET = 'ldct_iqa_synthetic/tiny'


def build_tiny_dataset(data_dir: str) -> None:
  """Writes 32 train / 8 validation / 8 test 32x32 slices (about a second)."""
  from mdiqa_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from mdiqa_jax.data import synthetic_builder  # pylint: disable=g-import-not-at-top
  # Coarse pixels (9-15 mm) so that the phantom fits in 32 px; two
  # degradations per rendered slice, as in the clinical spec.
  spec = dataclasses.replace(
      synthetic.CLINICAL_SPEC, image_size=IMAGE_SIZE, num_views_full=48,
      split_patients={'train': 8, 'validation': 2, 'test': 2, 'unlabeled': 1},
      slices_per_patient=2, dose_fractions=(1.0, 0.25), sparse_views=(16,),
      pixel_mm_range=(9.0, 15.0), seed=3)
  builder = synthetic_builder.LdctIqaSynthetic(
      config=synthetic_builder.SyntheticConfig(name='tiny', spec=spec), data_dir=data_dir,
      num_processes=1)
  builder.download_and_prepare()


def get_config(data_dir=None):
  config = base_config()
  config.data.name = DATASET
  config.data.data_dir = data_dir
  config.data.image_size = IMAGE_SIZE
  # The tiny slices have coarse pixels; score them at their own spacing.
  config.data.pixel_mm_range = (0.5, 20.0)
  config.data.train_min_body_fraction = 0.0
  config.model.vit.update(width=16, depth=2, num_heads=1, feature_blocks=(0, 1))
  config.model.use_cnn = False
  config.model.use_alignment = False
  config.model.head.hidden = 16
  config.optim.warmup_steps = 0
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  config.num_train_steps = 20
  return config
