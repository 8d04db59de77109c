"""Loading pretrained weights into `mdiqa_jax.models.convnext.ConvNeXt` params.

`load` accepts a timm `convnext_*` state dict (.safetensors / .pth) or a
directory written by `mdiqa-convert`, and maps it onto freshly initialised
params. A checkpoint stem for RGB is reduced to the model's single input
channel ('sum' by default, see `params.reduce_input_channels`); everything
else must match exactly, or the load fails listing the keys.
"""
import pathlib
from typing import Sequence

from mdiqa_jax.convert import files
from mdiqa_jax.convert import params as params_lib
from mdiqa_jax.convert import timm_convnext


def load(init_params, init_file, *, dont_load: Sequence[str] = (),
         channel_reduction: str = 'sum'):
  """Maps a ConvNeXt checkpoint onto initialised params.

  Args:
    init_params: the ConvNeXt's params from `ConvNeXt.init(...)['params']`
      (arrays, or jax.ShapeDtypeStruct when every param is loaded).
    init_file: timm .safetensors / .pth, or an `mdiqa-convert` output directory.
    dont_load: regular expressions of param names ('/'-joined) to keep from
      the init.
    channel_reduction: 'sum' or 'mean', for an RGB stem loaded into a
      single-channel model.

  Returns:
    (params, params_lib.LoadReport).
  """
  path = pathlib.Path(init_file)
  source = str(path)
  arrays = files.read_arrays(path)
  if path.is_dir():
    info = files.read_conversion_info(path) or {}
    if info.get('family', 'convnext') != 'convnext':
      raise ValueError(f'{source} holds converted {info["family"]} params, not a ConvNeXt.')
    converted, ignored = arrays, []
  elif timm_convnext.looks_like(arrays):
    converted, ignored = timm_convnext.convert(arrays, source=source)
  else:
    raise ValueError(f'{source} is not a ConvNeXt checkpoint: it looks like '
                     f'{params_lib.describe(arrays)}.')
  return params_lib.merge(
      init_params, converted, source=source, dont_load=dont_load,
      channel_adapters={'stem_conv/kernel': params_lib.reduce_input_channels(channel_reduction)},
      ignored=ignored)
