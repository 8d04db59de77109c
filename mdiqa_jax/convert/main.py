r"""`mdiqa-convert`: converts a pretrained checkpoint once into an Orbax checkpoint.

  mdiqa-convert --family=vit --preset=b/16 --image_size=512 \
      --input=vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors --output=/data/vit_b16
  mdiqa-convert --family=convnext --config=configs/paper.py \
      --input=convnext_tiny.fb_in22k.safetensors --output=/data/convnext_t

The architecture comes from --preset (models.vit.vit_config /
models.convnext.convnext_config names) or from a training config file
(config.model.vit / config.model.convnext: variant + overrides, image size
config.data.image_size),
so that the converted params are exactly the ones that config builds. Inputs:
timm .safetensors / .pth (.pth needs torch), big_vision / AugReg .npz (ViT).
The position embedding is resampled to --image_size and the RGB input kernel
reduced to --in_channels=1 (sum over RGB by default).

Writes OUTPUT/params (orbax StandardCheckpointer: the backbone's params tree,
written to a temporary directory and renamed when complete) and
OUTPUT/conversion.json (family, architecture, image size, load report).
Training loads it with --config.model.vit.init_from=OUTPUT (or
--config.model.convnext.init_from=OUTPUT), exactly as it loads the source file.
"""
from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from mdiqa_jax import cli
from mdiqa_jax.convert import files
from mdiqa_jax.convert import load_pretrained
from mdiqa_jax.models import convnext as convnext_model
from mdiqa_jax.models import vit as vit_model

_FAMILY = flags.DEFINE_enum('family', None, ['vit', 'convnext'], 'Backbone family.')
_INPUT = flags.DEFINE_string('input', None, 'Checkpoint file to convert.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory to create (must not hold params/).')
_PRESET = flags.DEFINE_string('preset', None, 'Architecture preset, e.g. b/16 or tiny.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training config file; its model.<family> architecture is used.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'Model input side in pixels (default: config.data.image_size, '
    'or 224 with --preset).')
_IN_CHANNELS = flags.DEFINE_integer('in_channels', 1, 'Model input channels (1 for CT).')
_CHANNEL_REDUCTION = flags.DEFINE_enum('channel_reduction', 'sum', ['sum', 'mean'],
                                       'How an RGB input kernel becomes one channel.')


def architecture(family: str, preset: str | None = None, config=None) -> dict:
  """Backbone keyword arguments from a preset name or a training config."""
  if (preset is None) == (config is None):
    raise ValueError('Give exactly one of --preset and --config.')
  if family == 'vit':
    if preset is not None:
      return vit_model.vit_config(preset)
    return vit_model.decode_variant(config.model.vit)
  if preset is not None:
    return convnext_model.convnext_config(preset)
  return convnext_model.decode_variant(config.model.convnext)


def convert(family: str, input_path, output_dir, *, model_kwargs: dict, image_size: int,
            in_channels: int = 1, channel_reduction: str = 'sum'):
  """Converts `input_path` for the given backbone and writes it under `output_dir`.

  Returns the LoadReport.
  """
  module = (vit_model.ViT if family == 'vit' else convnext_model.ConvNeXt)(**model_kwargs)
  images = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
  # Shapes only: every parameter is loaded, so nothing needs initialising.
  init_params = jax.eval_shape(module.init, jax.random.key(0), images)['params']
  params, report = load_pretrained(init_params, input_path, family, image_size,
                                   channel_reduction=channel_reduction)
  patch = model_kwargs.get('patch_size')
  info = {
      'family': family,
      'source': str(input_path),
      'model_kwargs': {k: list(v) if isinstance(v, tuple) else v
                       for k, v in model_kwargs.items()},
      'image_size': [image_size, image_size],
      'in_channels': in_channels,
      'channel_reduction': channel_reduction,
      'report': report.to_dict(),
  }
  if patch:
    info['grid'] = [image_size // patch, image_size // patch]
  files.write_orbax(output_dir, params, info)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not (_FAMILY.value and _INPUT.value and _OUTPUT.value):
    raise app.UsageError('Give --family, --input and --output.')
  cli.quiet_library_logging()
  config = _CONFIG.value
  try:
    model_kwargs = architecture(_FAMILY.value, _PRESET.value, config)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  image_size = _IMAGE_SIZE.value or (config.data.image_size if config is not None else 224)
  logging.info('Converting %s (%s, %s, %d px, %d channel(s)).', _INPUT.value, _FAMILY.value,
               model_kwargs, image_size, _IN_CHANNELS.value)
  report = convert(_FAMILY.value, _INPUT.value, _OUTPUT.value, model_kwargs=model_kwargs,
                   image_size=image_size, in_channels=_IN_CHANNELS.value,
                   channel_reduction=_CHANNEL_REDUCTION.value)
  print(report.summary())
  print(f'Wrote {_OUTPUT.value}/params and {_OUTPUT.value}/conversion.json.')


def run():
  """Console entry point `mdiqa-convert`."""
  app.run(main)


if __name__ == '__main__':
  run()
