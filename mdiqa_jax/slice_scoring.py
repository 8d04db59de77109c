"""Whole-slice scoring under its earlier name: the library is `mdiqa_jax.inference`.

  Preprocessing                   inference.preprocessing
  make_tile_predict_fn, score_slices   inference.scoring
  combine_tiles, patch_maps, TILE_KEYS inference.tiles
Kept so that code written against `mdiqa_jax.slice_scoring` keeps working.
"""
from mdiqa_jax.inference.predict_fn import PredictFn as TilePredictFn
from mdiqa_jax.inference.preprocessing import Preprocessing
from mdiqa_jax.inference.scoring import make_tile_predict_fn, score_slices
from mdiqa_jax.inference.tiles import TILE_KEYS, combine_tiles, patch_maps

__all__ = ['Preprocessing', 'TILE_KEYS', 'TilePredictFn', 'combine_tiles',
           'make_tile_predict_fn', 'patch_maps', 'score_slices']
