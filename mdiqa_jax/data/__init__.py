"""Data: CT simulation, TFDS builders, preprocessing and the input pipeline.

Importing this package registers the TFDS builders `ldct_iqa_synthetic`
(configs `clinical`, the default, and `challenge`) and `ldctiqac2023`, so that
`tfds.builder('ldct_iqa_synthetic/clinical')` works.
"""
from mdiqa_jax.data import ldctiqac2023  # pylint: disable=unused-import  (registers the builder)
from mdiqa_jax.data import synthetic_builder  # pylint: disable=unused-import  (registers the builder)
