"""Loading pretrained weights into `mdiqa_jax.models.vit.ViT` params.

`load` accepts a timm `vit_*` state dict (.safetensors / .pth), a big_vision
or AugReg .npz, or a directory written by `mdiqa-convert`, and maps it onto
freshly initialised params:
  * the position embedding is resampled to the model's patch grid when the
    checkpoint was made for another image size, as timm does when it loads
    pretrained weights at a new size (bicubic, antialiased; the class token,
    folded into `cls`, is kept as is);
  * a checkpoint patch embedding for RGB is reduced to the model's single
    input channel ('sum' by default, see `params.reduce_input_channels`);
  * everything else must match exactly, or the load fails listing the keys.
"""
import math
import pathlib
from typing import Sequence

import jax
import numpy as np

from mdiqa_jax.convert import big_vision_vit
from mdiqa_jax.convert import files
from mdiqa_jax.convert import params as params_lib
from mdiqa_jax.convert import timm_vit

# Our names -> jax.image.resize methods; both antialiased, as in timm's
# resample_abs_pos_embed (torch's antialiased kernels, Keys a = -0.5 cubic).
INTERPOLATIONS = {'bicubic': 'bicubic', 'bilinear': 'linear'}


def resample_pos_embedding(pos_embedding, old_grid: Sequence[int], new_grid: Sequence[int],
                           interpolation: str = 'bicubic') -> np.ndarray:
  """Resizes a (1, old_h * old_w, D) patch position embedding to (1, new_h * new_w, D).

  Rows are in row-major grid order. Interpolation is 'bicubic' or 'bilinear',
  antialiased when shrinking; computed in float32.
  """
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}; expected one of '
                     f'{sorted(INTERPOLATIONS)}.')
  pos_embedding = np.asarray(pos_embedding, np.float32)
  width = pos_embedding.shape[-1]
  if pos_embedding.shape != (1, old_grid[0] * old_grid[1], width):
    raise ValueError(f'pos_embedding {pos_embedding.shape} does not hold a '
                     f'{tuple(old_grid)} grid.')
  if tuple(old_grid) == tuple(new_grid):
    return pos_embedding
  grid = pos_embedding.reshape(1, old_grid[0], old_grid[1], width)
  resized = jax.image.resize(grid, (1, new_grid[0], new_grid[1], width),
                             method=INTERPOLATIONS[interpolation], antialias=True)
  return np.asarray(resized).reshape(1, new_grid[0] * new_grid[1], width)


def load(init_params, init_file, *, dont_load: Sequence[str] = (), image_size=None,
         channel_reduction: str = 'sum', interpolation: str = 'bicubic'):
  """Maps a ViT checkpoint onto initialised params.

  Args:
    init_params: the ViT's params from `ViT.init(...)['params']` (arrays, or
      jax.ShapeDtypeStruct when every param is loaded).
    init_file: timm .safetensors / .pth, big_vision / AugReg .npz, or an
      `mdiqa-convert` output directory.
    dont_load: regular expressions of param names ('/'-joined) to keep from
      the init.
    image_size: the model's input size, int or (H, W); needed only when the
      patch grid is not square. The grid otherwise follows from init_params.
    channel_reduction: 'sum' or 'mean', for an RGB patch embedding loaded into
      a single-channel model.
    interpolation: 'bicubic' or 'bilinear' position-embedding resampling.

  Returns:
    (params, params_lib.LoadReport).
  """
  path = pathlib.Path(init_file)
  source = str(path)
  arrays = files.read_arrays(path)
  old_grid = None
  if path.is_dir():
    info = files.read_conversion_info(path) or {}
    _check_family(info, source)
    converted, ignored = arrays, []
    old_grid = info.get('grid')
  elif timm_vit.looks_like(arrays):
    converted, ignored = timm_vit.convert(arrays, num_heads=_num_heads(init_params),
                                          source=source)
  elif big_vision_vit.looks_like(arrays):
    converted, ignored = big_vision_vit.convert(arrays, source=source)
  else:
    raise ValueError(f'{source} is not a ViT checkpoint: it looks like '
                     f'{params_lib.describe(arrays)}.')
  new_grid = _model_grid(init_params, image_size)

  def resize(array, target_shape):
    if array.ndim != 3 or array.shape[2] != target_shape[2]:
      return None
    grid = old_grid or _square_grid(array.shape[1], f'{source} pos_embedding')
    if new_grid[0] * new_grid[1] != target_shape[1]:
      return None
    resized = resample_pos_embedding(array, grid, new_grid, interpolation)
    return resized, f'grid {tuple(grid)} -> {tuple(new_grid)}, {interpolation}'

  return params_lib.merge(
      init_params, converted, source=source, dont_load=dont_load,
      resizers={'pos_embedding': resize},
      channel_adapters={'embedding/kernel': params_lib.reduce_input_channels(channel_reduction)},
      ignored=ignored)


def _check_family(info, source):
  if info.get('family', 'vit') != 'vit':
    raise ValueError(f'{source} holds converted {info["family"]} params, not a ViT.')


def _num_heads(init_params):
  try:
    return init_params['encoderblock_0']['MultiHeadDotProductAttention_0']['query'][
        'kernel'].shape[1]
  except (KeyError, TypeError) as error:
    raise ValueError('init_params are not mdiqa_jax.models.vit.ViT params (no '
                     'encoderblock_0/MultiHeadDotProductAttention_0/query/kernel).') from error


def _model_grid(init_params, image_size):
  """(grid_h, grid_w) of the model's position embedding."""
  num_positions = init_params['pos_embedding'].shape[1]
  if image_size is None:
    return _square_grid(num_positions, 'the model pos_embedding (pass image_size)')
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  patch = init_params['embedding']['kernel'].shape[0]
  grid = (height // patch, width // patch)
  if grid[0] * grid[1] != num_positions:
    raise ValueError(f'image_size={image_size} with patch {patch} gives a {grid} grid, but '
                     f'the model pos_embedding has {num_positions} positions.')
  return grid


def _square_grid(num_positions, what):
  side = math.isqrt(num_positions)
  if side * side != num_positions:
    raise ValueError(f'{what}: {num_positions} positions are not a square grid.')
  return side, side
