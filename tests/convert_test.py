"""Pretrained-weight conversion: file formats, resampling, channel reduction, errors.

References are timm's own outputs and resampled position embeddings, stored in
tests/fixtures/ by make_timm_fixtures.py (torch + timm, run by hand).
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from mdiqa_jax.convert import convnext as convert_convnext
from mdiqa_jax.convert import files
from mdiqa_jax.convert import load_pretrained
from mdiqa_jax.convert import main as convert_main
from mdiqa_jax.convert import timm_convnext
from mdiqa_jax.convert import timm_vit
from mdiqa_jax.convert import params as params_lib
from mdiqa_jax.convert import vit as convert_vit
from mdiqa_jax.models.convnext import ConvNeXt, convnext_config
from mdiqa_jax.models.vit import ViT, vit_config

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
REPO = FIXTURES.parent.parent
VIT_FILE = FIXTURES / 'vit_timm.safetensors'
CONVNEXT_FILE = FIXTURES / 'convnext_timm.safetensors'
FIXTURE_VIT = dict(patch_size=8, width=32, depth=2, num_heads=2, feature_blocks=(0, 1))
FIXTURE_VIT224 = dict(patch_size=16, width=16, depth=1, num_heads=2, feature_blocks=(0,))
FIXTURE_CONVNEXT = dict(depths=(1, 1, 1, 1), widths=(8, 16, 32, 64))
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def init_shapes(module, image_size, channels=3):
  images = jnp.zeros((1, image_size, image_size, channels))
  return jax.eval_shape(module.init, jax.random.key(0), images)['params']


def timm_block_grid(tokens, grid):
  return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, tokens.shape[-1])


@pytest.fixture(scope='module')
def vit_reference():
  return np.load(FIXTURES / 'vit_timm_outputs.npz')


@pytest.mark.parametrize('file_name, ignored', [
    ('vit_augreg.npz', ['head/bias', 'head/kernel']), ('vit_big_vision.npz', [])])
def test_big_vision_layouts_reproduce_timm_outputs(vit_reference, file_name, ignored):
  model = ViT(**FIXTURE_VIT)
  params, report = convert_vit.load(init_shapes(model, 32), FIXTURES / file_name)
  assert report.ignored == ignored
  out = jax.jit(model.apply)({'params': params}, vit_reference['input'])
  for block in (0, 1):
    np.testing.assert_allclose(out['features'][block],
                               timm_block_grid(vit_reference[f'block_{block}'], 4), **TOLERANCE)
  np.testing.assert_allclose(out['tokens'], vit_reference['tokens'], **TOLERANCE)
  np.testing.assert_allclose(out['pre_logits'], vit_reference['pre_logits'], **TOLERANCE)


@pytest.mark.parametrize('image_size', [64, 40])
def test_vit_loaded_at_new_size_matches_timm_resampling(vit_reference, image_size):
  """timm builds a model at the new size and resamples pos_embed on load; so do we."""
  model = ViT(**FIXTURE_VIT)
  params, report = convert_vit.load(init_shapes(model, image_size), VIT_FILE)
  grid = image_size // 8
  assert report.resized == [f'pos_embedding: grid (4, 4) -> ({grid}, {grid}), bicubic']
  np.testing.assert_allclose(params['pos_embedding'],
                             vit_reference[f'pos_embed_{image_size}'][:, 1:], **TOLERANCE)
  out = jax.jit(model.apply)({'params': params}, vit_reference[f'input_{image_size}'])
  for block in (0, 1):
    np.testing.assert_allclose(
        out['features'][block],
        timm_block_grid(vit_reference[f'block_{block}_{image_size}'], grid), **TOLERANCE)
  np.testing.assert_allclose(out['tokens'], vit_reference[f'tokens_{image_size}'], **TOLERANCE)
  np.testing.assert_allclose(out['pre_logits'], vit_reference[f'pre_logits_{image_size}'],
                             **TOLERANCE)


def test_vit_converted_at_224_runs_at_512_and_256_and_is_unchanged_at_224():
  model = ViT(**FIXTURE_VIT224)
  state_dict = files.read_arrays(FIXTURES / 'vit224_timm.safetensors')
  timm_resampled = np.load(FIXTURES / 'vit224_timm_pos_embed.npz')
  params, report = convert_vit.load(init_shapes(model, 224, channels=1),
                                    FIXTURES / 'vit224_timm.safetensors')
  assert report.resized == []
  np.testing.assert_array_equal(params['pos_embedding'], state_dict['pos_embed'][:, 1:])
  np.testing.assert_array_equal(params['cls'],
                                state_dict['cls_token'] + state_dict['pos_embed'][:, :1])
  for image_size in (512, 256):
    params, report = convert_vit.load(init_shapes(model, image_size, channels=1),
                                      FIXTURES / 'vit224_timm.safetensors')
    grid = image_size // 16
    assert report.resized == [f'pos_embedding: grid (14, 14) -> ({grid}, {grid}), bicubic']
    np.testing.assert_allclose(params['pos_embedding'],
                               timm_resampled[f'pos_embed_{image_size}'][:, 1:], **TOLERANCE)
    images = jax.random.normal(jax.random.key(0), (1, image_size, image_size, 1))
    out = jax.jit(model.apply)({'params': params}, images)
    assert out['features'][0].shape == (1, grid, grid, 16)
    assert out['tokens'].shape == (1, 1 + grid * grid, 16)
    assert bool(jnp.all(jnp.isfinite(out['tokens'])))


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('grid', [3, 8])
def test_resample_pos_embedding_matches_timm(vit_reference, interpolation, grid):
  state_dict = files.read_arrays(VIT_FILE)
  resized = convert_vit.resample_pos_embedding(state_dict['pos_embed'][:, 1:], (4, 4),
                                               (grid, grid), interpolation)
  np.testing.assert_allclose(resized, vit_reference[f'pos_embed_{interpolation}_{grid}'][:, 1:],
                             **TOLERANCE)


def vit_rgb_and_grey(reduction):
  model = ViT(**FIXTURE_VIT)
  rgb, _ = convert_vit.load(init_shapes(model, 32), VIT_FILE)
  grey, report = convert_vit.load(init_shapes(model, 32, channels=1), VIT_FILE,
                                  channel_reduction=reduction)
  return model, rgb, grey, report


def test_vit_sum_reduction_on_grey_equals_rgb_model_on_replicated_grey(vit_reference):
  model, rgb, grey, report = vit_rgb_and_grey('sum')
  assert report.adapted == ['embedding/kernel: sum over 3 input channels -> 1']
  image = vit_reference['input'][..., :1]
  apply = jax.jit(model.apply)
  through_rgb = apply({'params': rgb}, np.repeat(image, 3, axis=-1))
  through_grey = apply({'params': grey}, image)
  for key in ('tokens', 'pre_logits'):
    np.testing.assert_allclose(through_grey[key], through_rgb[key], **TOLERANCE)


def test_mean_reduction_divides_the_summed_kernel_by_three():
  _, rgb, grey, report = vit_rgb_and_grey('mean')
  assert report.adapted == ['embedding/kernel: mean over 3 input channels -> 1']
  np.testing.assert_allclose(grey['embedding']['kernel'][:, :, 0],
                             rgb['embedding']['kernel'].sum(axis=2) / 3, rtol=1e-6)


def test_convnext_sum_reduction_on_grey_equals_rgb_model_on_replicated_grey():
  reference = np.load(FIXTURES / 'convnext_timm_outputs.npz')
  model = ConvNeXt(**FIXTURE_CONVNEXT)
  rgb, _ = convert_convnext.load(init_shapes(model, 64), CONVNEXT_FILE)
  grey, report = convert_convnext.load(init_shapes(model, 64, channels=1), CONVNEXT_FILE)
  assert report.adapted == ['stem_conv/kernel: sum over 3 input channels -> 1']
  image = reference['input'][..., :1]
  apply = jax.jit(model.apply)
  through_rgb = apply({'params': rgb}, np.repeat(image, 3, axis=-1))
  through_grey = apply({'params': grey}, image)
  for stage in range(4):
    np.testing.assert_allclose(through_grey['stages'][stage], through_rgb['stages'][stage],
                               **TOLERANCE)


def test_dont_load_keeps_the_init_and_reports_it():
  model = ViT(**FIXTURE_VIT)
  init = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), init_shapes(model, 32))
  params, report = convert_vit.load(init, VIT_FILE, dont_load=('encoder_norm/.*',))
  assert report.left_initialised == ['encoder_norm/bias', 'encoder_norm/scale']
  assert len(report.loaded) == 36
  np.testing.assert_array_equal(params['encoder_norm']['scale'], np.full(32, 7.0))
  assert not np.allclose(params['encoderblock_0']['LayerNorm_0']['scale'], 7.0)


# ---------------------------------------------------------------- bad files


def write_safetensors(path, arrays):
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
  return path


def test_wrong_family_is_named_in_the_error():
  with pytest.raises(ValueError, match='not a ViT checkpoint.*timm ConvNeXt state dict'):
    convert_vit.load(init_shapes(ViT(**FIXTURE_VIT), 32), CONVNEXT_FILE)
  with pytest.raises(ValueError, match='not a ConvNeXt checkpoint.*timm ViT state dict'):
    convert_convnext.load(init_shapes(ConvNeXt(**FIXTURE_CONVNEXT), 64), VIT_FILE)
  with pytest.raises(ValueError, match='not a ConvNeXt checkpoint.*big_vision'):
    convert_convnext.load(init_shapes(ConvNeXt(**FIXTURE_CONVNEXT), 64),
                          FIXTURES / 'vit_augreg.npz')


@pytest.mark.parametrize('source', ['vit_timm.safetensors', 'vit_augreg.npz'])
def test_truncated_file_is_a_clear_error(tmp_path, source):
  data = (FIXTURES / source).read_bytes()
  truncated = tmp_path / source
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{truncated}.*truncated'):
    convert_vit.load(init_shapes(ViT(**FIXTURE_VIT), 32), truncated)


def test_missing_keys_are_listed(tmp_path):
  state_dict = files.read_arrays(VIT_FILE)
  partial = {k: v for k, v in state_dict.items() if not k.startswith('blocks.1.')}
  path = write_safetensors(tmp_path / 'partial.safetensors', partial)
  with pytest.raises(ValueError, match=r'missing from the checkpoint \(16\): '
                     r'encoderblock_1/LayerNorm_0/bias, encoderblock_1/LayerNorm_0/scale'):
    convert_vit.load(init_shapes(ViT(**FIXTURE_VIT), 32), path)


def test_deeper_model_than_checkpoint_is_an_error():
  deeper = ViT(**{**FIXTURE_VIT, 'depth': 3})
  with pytest.raises(ValueError, match='missing from the checkpoint.*encoderblock_2/'):
    convert_vit.load(init_shapes(deeper, 32), VIT_FILE)


def test_shape_mismatch_lists_checkpoint_and_model_shapes():
  wider = ViT(**{**FIXTURE_VIT, 'width': 64})
  with pytest.raises(ValueError, match=r'shape mismatches.*encoder_norm/bias: checkpoint '
                     r'\(32,\) vs model \(64,\)'):
    convert_vit.load(init_shapes(wider, 32), VIT_FILE)
  convnext = ConvNeXt(depths=(1, 1, 1, 1), widths=(16, 32, 64, 128))
  with pytest.raises(ValueError, match=r'head_norm/bias: checkpoint \(64,\) vs model \(128,\)'):
    convert_convnext.load(init_shapes(convnext, 64), CONVNEXT_FILE)


def test_unsupported_timm_arrays_are_listed(tmp_path):
  state_dict = files.read_arrays(VIT_FILE)
  state_dict['blocks.0.ls1.gamma'] = np.ones(32, np.float32)
  path = write_safetensors(tmp_path / 'layer_scale.safetensors', state_dict)
  with pytest.raises(ValueError, match=r"no counterpart.*\['blocks.0.ls1.gamma'\]"):
    convert_vit.load(init_shapes(ViT(**FIXTURE_VIT), 32), path)


def test_unknown_format_and_missing_file_are_errors(tmp_path):
  odd = tmp_path / 'weights.ckpt'
  odd.write_bytes(b'0')
  with pytest.raises(ValueError, match=r"weights.ckpt: unknown format '.ckpt'"):
    files.read_arrays(odd)
  with pytest.raises(FileNotFoundError, match='absent.safetensors does not exist'):
    files.read_arrays(tmp_path / 'absent.safetensors')
  with pytest.raises(ValueError, match="family='swin'"):
    load_pretrained({}, VIT_FILE, 'swin')


def test_pth_without_torch_asks_for_torch_or_safetensors(tmp_path):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip('torch is installed here; the error path needs it absent.')
  except ImportError:
    pass
  path = tmp_path / 'model.pth'
  path.write_bytes(b'not read')
  with pytest.raises(ImportError, match='needs PyTorch.*safetensors'):
    files.read_arrays(path)


def test_pth_state_dict_loads_like_safetensors(tmp_path):
  torch = pytest.importorskip('torch')
  state_dict = files.read_arrays(VIT_FILE)
  path = tmp_path / 'model.pth'
  torch.save({'state_dict': {f'module.{k}': torch.from_numpy(v) for k, v in state_dict.items()}},
             path)
  assert files.read_arrays(path).keys() == state_dict.keys()
  for key, value in files.read_arrays(path).items():
    np.testing.assert_array_equal(value, state_dict[key])


# ---------------------------------------------------------------- Orbax / CLI


def test_converted_orbax_checkpoint_loads_to_the_same_params(tmp_path, vit_reference):
  model = ViT(**FIXTURE_VIT)
  output = tmp_path / 'converted'
  report = convert_main.convert('vit', VIT_FILE, output, model_kwargs=FIXTURE_VIT,
                                image_size=32, in_channels=3)
  assert len(report.loaded) == 38
  info = json.loads((output / 'conversion.json').read_text())
  assert (info['family'], info['grid'], info['in_channels']) == ('vit', [4, 4], 3)
  direct, _ = convert_vit.load(init_shapes(model, 32), VIT_FILE)
  restored, restored_report = load_pretrained(init_shapes(model, 32), output, 'vit')
  assert (len(restored_report.loaded), restored_report.resized) == (38, [])
  jax.tree.map(np.testing.assert_array_equal, restored, direct)
  # And at another size, the converted grid is resampled like the original.
  resized, _ = load_pretrained(init_shapes(model, 64), output, 'vit')
  np.testing.assert_allclose(resized['pos_embedding'],
                             vit_reference['pos_embed_64'][:, 1:], **TOLERANCE)
  with pytest.raises(ValueError, match='holds converted vit params, not a ConvNeXt'):
    convert_convnext.load(init_shapes(ConvNeXt(**FIXTURE_CONVNEXT), 64), output)
  with pytest.raises(FileExistsError, match='already exists'):
    convert_main.convert('vit', VIT_FILE, output, model_kwargs=FIXTURE_VIT, image_size=32)


def test_mdiqa_convert_command_with_a_training_config(tmp_path):
  config = tmp_path / 'fixture_config.py'
  config.write_text(
      'from mdiqa_jax.config_base import base_config\n\n\n'
      'def get_config(arg=None):\n'
      '  del arg\n'
      '  config = base_config()\n'
      '  config.data.image_size = 64\n'
      '  config.model.vit.update(patch_size=8, width=32, depth=2, num_heads=2,\n'
      '                          feature_blocks=(0, 1))\n'
      '  return config\n')
  output = tmp_path / 'vit_from_command'
  result = subprocess.run(
      [sys.executable, '-m', 'mdiqa_jax.convert.main', '--family=vit',
       f'--config={config}', f'--input={VIT_FILE}', f'--output={output}'],
      capture_output=True, text=True, cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)},
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'pos_embedding: grid (4, 4) -> (8, 8), bicubic' in result.stdout
  assert 'embedding/kernel: sum over 3 input channels -> 1' in result.stdout
  params = files.read_orbax(output)
  assert params['pos_embedding'].shape == (1, 64, 32)
  assert params['embedding/kernel'].shape == (8, 8, 1, 32)


# ------------------------------------------------- registered timm model shapes


@pytest.mark.parametrize('timm_name, family, preset', [
    ('vit_tiny_patch16_224', 'vit', 'ti/16'), ('vit_small_patch16_224', 'vit', 's/16'),
    ('vit_base_patch16_224', 'vit', 'b/16'), ('vit_base_patch8_224', 'vit', 'b/8'),
    ('convnext_atto', 'convnext', 'atto'), ('convnext_tiny', 'convnext', 'tiny'),
    ('convnext_small', 'convnext', 'small'), ('convnext_base', 'convnext', 'base')])
def test_registered_timm_state_dicts_convert_onto_presets(timm_name, family, preset):
  """Every array of the real timm model, by its recorded shape, lands on a preset param."""
  registry = json.loads((FIXTURES / 'timm_registry_shapes.json').read_text())['models']
  state_dict = {k: np.zeros(s, np.float32)
                for k, s in registry[timm_name]['state_dict'].items()}
  if family == 'vit':
    model = ViT(**vit_config(preset))
    converted, ignored = timm_vit.convert(state_dict, num_heads=model.num_heads,
                                          source=timm_name)
  else:
    model = ConvNeXt(**convnext_config(preset))
    converted, ignored = timm_convnext.convert(state_dict, source=timm_name)
  init = init_shapes(model, 224)
  _, report = params_lib.merge(init, converted, source=timm_name, ignored=ignored)
  assert len(report.loaded) == len(jax.tree.leaves(init))
  assert report.ignored == sorted(k for k in state_dict if k.startswith('head.') and
                                  not k.startswith('head.norm'))
