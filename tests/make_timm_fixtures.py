"""Writes the timm reference fixtures that the backbone and converter tests read.

Run by hand, never in CI, in a separate virtual environment with PyTorch and timm:

  python3 -m venv /work/torchvenv
  /work/torchvenv/bin/pip install torch==2.13.0 timm safetensors numpy
  /work/torchvenv/bin/python tests/make_timm_fixtures.py

Small timm models are built with seeded random weights (every parameter,
layer-scale gammas and LayerNorm affines included, drawn so that each one
changes the outputs), run in float32 on a seeded input, and saved to
tests/fixtures/:

  vit_timm.safetensors              timm VisionTransformer, 32 px, patch 8,
                                    width 32, 2 blocks, 2 heads, no classifier.
  vit_timm_outputs.npz              its input (NHWC) and, at 32 px, every block
                                    output, the normed tokens and pre_logits;
                                    the same at 64 px and 40 px for a model built
                                    at that size from the 32 px weights (timm's
                                    checkpoint_filter_fn resamples pos_embed,
                                    bicubic with antialias), those resampled
                                    pos_embed tables, and timm's
                                    resample_abs_pos_embed of the 4x4 grid to
                                    3x3 and 8x8, bicubic and bilinear.
  vit_augreg.npz                    the same weights in the google-research/
                                    vision_transformer (AugReg) .npz layout.
  vit_big_vision.npz                the same weights in big_vision's linen
                                    layout with scanned (stacked) blocks.
  vit224_timm.safetensors           timm VisionTransformer, 224 px, patch 16,
                                    width 16, 1 block: the 224 -> 512 / 256 case.
  vit224_timm_pos_embed.npz         its pos_embed as timm resamples it for 512
                                    and 256 px models.
  convnext_timm.safetensors         timm ConvNeXt, depths (1,1,1,1), dims
                                    (8,16,32,64), Linear MLP (convnext_tiny..).
  convnext_convmlp_timm.safetensors the same with conv_mlp=True (1x1-conv MLP,
                                    the layout of convnext_atto..nano).
  convnext_timm_outputs.npz,        input (NHWC), the four stage outputs (NHWC)
  convnext_convmlp_timm_outputs.npz and pre_logits.
  timm_registry_shapes.json         state-dict key -> shape of the registered
                                    timm models that the presets mirror, and
                                    their head counts / depths / widths.

The script also checks that the registered timm models (created with
pretrained=False on the meta device) have exactly the key structure of the
fixture models, so that parity on the fixtures covers them, and prints the
names it verified.

timm imports torchvision; the torchvision wheel on PyPI is built for CUDA
PyTorch and its compiled ops fail to register next to the CPU wheel, after
which `import torchvision` raises on the missing `torchvision::nms` schema.
Nothing here uses torchvision ops, so the two schemas it needs are declared
before timm is imported.
"""
import json
import pathlib
import re

import numpy as np
import torch

for _op in ('nms', 'qnms'):
  try:
    torch.library.define(f'torchvision::{_op}',
                         '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  except RuntimeError:  # Already registered by a working torchvision.
    pass

import safetensors.torch  # pylint: disable=g-import-not-at-top
import timm
from timm.layers import resample_abs_pos_embed
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'

VIT_KWARGS = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
VIT224_KWARGS = dict(img_size=224, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                     num_classes=0)
CONVNEXT_KWARGS = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=0)

VIT_NAMES = ('vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224',
             'vit_base_patch8_224', 'vit_tiny_patch16_384', 'vit_small_patch16_384',
             'vit_base_patch16_384', 'vit_large_patch16_224')
CONVNEXT_LINEAR_NAMES = ('convnext_tiny', 'convnext_small', 'convnext_base',
                         'convnext_large')
CONVNEXT_CONVMLP_NAMES = ('convnext_atto', 'convnext_femto', 'convnext_pico',
                          'convnext_nano')
# Registered models whose full key -> shape table is saved for the preset tests.
REGISTRY_SHAPE_NAMES = ('vit_tiny_patch16_224', 'vit_small_patch16_224',
                        'vit_base_patch16_224', 'vit_base_patch8_224',
                        'convnext_atto', 'convnext_tiny', 'convnext_small',
                        'convnext_base')


def randomize_(model, seed):
  """Overwrites every parameter with seeded values that all affect the output."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if param.ndim >= 2 and name.endswith('weight'):
        fan_in = param[0].numel()
        param.copy_(noise / fan_in ** 0.5)
      elif name.endswith('gamma'):
        param.copy_(0.5 * noise)
      elif 'norm' in name and name.endswith('weight'):
        param.copy_(1.0 + 0.2 * noise)
      else:  # Biases, class token, position embedding.
        param.copy_(0.2 * noise)
  return model


def nhwc(tensor):
  return tensor.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def vit_run(model, images):
  """Block outputs (B, 1+N, D), normed tokens and pre_logits of a timm ViT."""
  block_outputs = []
  hooks = [block.register_forward_hook(lambda m, i, o: block_outputs.append(o.detach()))
           for block in model.blocks]
  with torch.no_grad():
    tokens = model.forward_features(images)
    pre_logits = model.forward_head(tokens, pre_logits=True)
  for hook in hooks:
    hook.remove()
  out = {f'block_{i}': b.numpy() for i, b in enumerate(block_outputs)}
  out['tokens'] = tokens.numpy()
  out['pre_logits'] = pre_logits.numpy()
  return out


def vit_at_size(state_dict, image_size, kwargs):
  """A timm ViT built for `image_size`, loaded the way timm loads pretrained weights."""
  model = VisionTransformer(img_size=image_size, **kwargs).eval()
  model.load_state_dict(checkpoint_filter_fn(state_dict, model))
  return model


def vit_fixtures():
  torch.manual_seed(0)
  model = randomize_(VisionTransformer(img_size=32, **VIT_KWARGS), seed=1).eval()
  state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
  safetensors.torch.save_file(state_dict, FIXTURES / 'vit_timm.safetensors')

  generator = torch.Generator().manual_seed(2)
  out = {}
  for image_size, batch, suffix in ((32, 2, ''), (64, 1, '_64'), (40, 1, '_40')):
    images = torch.randn((batch, 3, image_size, image_size), generator=generator)
    sized = model if image_size == 32 else vit_at_size(state_dict, image_size, VIT_KWARGS)
    out.update({k + suffix: v for k, v in vit_run(sized, images).items()})
    out['input' + suffix] = nhwc(images)
    out['pos_embed' + suffix] = sized.pos_embed.detach().numpy()
  for interpolation in ('bicubic', 'bilinear'):
    for grid in (3, 8):  # Shrinking (antialiased) and growing the 4x4 grid.
      out[f'pos_embed_{interpolation}_{grid}'] = resample_abs_pos_embed(
          model.pos_embed.detach(), new_size=(grid, grid), num_prefix_tokens=1,
          interpolation=interpolation, antialias=True).numpy()
  np.savez(FIXTURES / 'vit_timm_outputs.npz', **out)

  np.savez(FIXTURES / 'vit_augreg.npz', **augreg_layout(state_dict, VIT_KWARGS['num_heads']))
  np.savez(FIXTURES / 'vit_big_vision.npz',
           **big_vision_scanned_layout(state_dict, VIT_KWARGS['num_heads']))

  model224 = randomize_(VisionTransformer(**VIT224_KWARGS), seed=3).eval()
  state_dict224 = {k: v.contiguous() for k, v in model224.state_dict().items()}
  safetensors.torch.save_file(state_dict224, FIXTURES / 'vit224_timm.safetensors')
  kwargs = {k: v for k, v in VIT224_KWARGS.items() if k != 'img_size'}
  np.savez(FIXTURES / 'vit224_timm_pos_embed.npz', **{
      f'pos_embed_{size}': vit_at_size(state_dict224, size, kwargs).pos_embed.detach().numpy()
      for size in (512, 256)})


def attention_kernels(state_dict, prefix, num_heads):
  """timm's fused qkv / proj of one block as Flax (D, H, hd) / (H, hd, D) kernels."""
  qkv_w = state_dict[prefix + 'attn.qkv.weight'].numpy()
  qkv_b = state_dict[prefix + 'attn.qkv.bias'].numpy()
  width = qkv_w.shape[1]
  head_dim = width // num_heads
  out = {}
  for index, name in enumerate(('query', 'key', 'value')):
    rows = slice(index * width, (index + 1) * width)
    out[name + '/kernel'] = qkv_w[rows].T.reshape(width, num_heads, head_dim)
    out[name + '/bias'] = qkv_b[rows].reshape(num_heads, head_dim)
  out['out/kernel'] = state_dict[prefix + 'attn.proj.weight'].numpy().T.reshape(
      num_heads, head_dim, width)
  out['out/bias'] = state_dict[prefix + 'attn.proj.bias'].numpy()
  return out


def block_layout(state_dict, index, num_heads, names):
  """One block in a Flax layout; `names` = (ln1, attention, ln2, mlp) module names."""
  prefix = f'blocks.{index}.'
  ln1, attention, ln2, mlp = names
  get = lambda k: state_dict[prefix + k].numpy()
  out = {f'{ln1}/scale': get('norm1.weight'), f'{ln1}/bias': get('norm1.bias'),
         f'{ln2}/scale': get('norm2.weight'), f'{ln2}/bias': get('norm2.bias'),
         f'{mlp}/Dense_0/kernel': get('mlp.fc1.weight').T, f'{mlp}/Dense_0/bias': get('mlp.fc1.bias'),
         f'{mlp}/Dense_1/kernel': get('mlp.fc2.weight').T, f'{mlp}/Dense_1/bias': get('mlp.fc2.bias')}
  out.update({f'{attention}/{k}': v
              for k, v in attention_kernels(state_dict, prefix, num_heads).items()})
  return out


def stem_layout(state_dict):
  return {'embedding/kernel': state_dict['patch_embed.proj.weight'].numpy().transpose(2, 3, 1, 0),
          'embedding/bias': state_dict['patch_embed.proj.bias'].numpy(),
          'Transformer/encoder_norm/scale': state_dict['norm.weight'].numpy(),
          'Transformer/encoder_norm/bias': state_dict['norm.bias'].numpy()}


def augreg_layout(state_dict, num_heads):
  """vision_transformer / AugReg .npz: pre-linen module numbering, cls + posemb rows."""
  out = stem_layout(state_dict)
  out['cls'] = state_dict['cls_token'].numpy()
  out['Transformer/posembed_input/pos_embedding'] = state_dict['pos_embed'].numpy()
  depth = len({k.split('.')[1] for k in state_dict if k.startswith('blocks.')})
  names = ('LayerNorm_0', 'MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3')
  for index in range(depth):
    out.update({f'Transformer/encoderblock_{index}/{k}': v
                for k, v in block_layout(state_dict, index, num_heads, names).items()})
  out['head/kernel'] = np.zeros((state_dict['norm.weight'].shape[0], 5), np.float32)
  out['head/bias'] = np.zeros((5,), np.float32)
  return out


def big_vision_scanned_layout(state_dict, num_heads):
  """big_vision linen layout, scan=True: posemb added before [cls] is prepended."""
  out = {'params/' + k: v for k, v in stem_layout(state_dict).items()}
  pos_embed = state_dict['pos_embed'].numpy()
  out['params/cls'] = state_dict['cls_token'].numpy() + pos_embed[:, :1]
  out['params/pos_embedding'] = pos_embed[:, 1:]
  depth = len({k.split('.')[1] for k in state_dict if k.startswith('blocks.')})
  names = ('LayerNorm_0', 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
  blocks = [block_layout(state_dict, index, num_heads, names) for index in range(depth)]
  for key in blocks[0]:
    out[f'params/Transformer/encoderblock/{key}'] = np.stack([b[key] for b in blocks])
  return out


def convnext_fixtures():
  for name, conv_mlp, seed in (('convnext', False, 4), ('convnext_convmlp', True, 5)):
    model = randomize_(ConvNeXt(conv_mlp=conv_mlp, **CONVNEXT_KWARGS), seed=seed).eval()
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state_dict, FIXTURES / f'{name}_timm.safetensors')
    images = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(seed + 10))
    stage_outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: stage_outputs.append(o.detach()))
             for stage in model.stages]
    with torch.no_grad():
      pre_logits = model.forward_head(model.forward_features(images), pre_logits=True)
    for hook in hooks:
      hook.remove()
    out = {f'stage_{i}': nhwc(s) for i, s in enumerate(stage_outputs)}
    out['input'] = nhwc(images)
    out['pre_logits'] = pre_logits.numpy()
    np.savez(FIXTURES / f'{name}_timm_outputs.npz', **out)


def structure(model):
  """{(key with indices replaced by N, ndim)} of a model's state dict, classifier dropped."""
  return {(re.sub(r'\.\d+\.', '.N.', k), v.ndim) for k, v in model.state_dict().items()
          if not k.startswith(('head.fc.', 'head.weight', 'head.bias'))}


def registered(name):
  with torch.device('meta'):
    return timm.create_model(name, pretrained=False)


def check_registered_structures():
  """Asserts registered timm models share the fixture models' key structure."""
  reference = {
      'vit': structure(VisionTransformer(img_size=32, **VIT_KWARGS)),
      'convnext': structure(ConvNeXt(conv_mlp=False, **CONVNEXT_KWARGS)),
      'convnext_convmlp': structure(ConvNeXt(conv_mlp=True, **CONVNEXT_KWARGS)),
  }
  groups = (('vit', VIT_NAMES), ('convnext', CONVNEXT_LINEAR_NAMES),
            ('convnext_convmlp', CONVNEXT_CONVMLP_NAMES))
  verified = {}
  for fixture, names in groups:
    for name in names:
      found = structure(registered(name))
      if found != reference[fixture]:
        raise AssertionError(f'{name}: key structure differs from the {fixture} fixture: '
                             f'{sorted(found ^ reference[fixture])}')
      verified[name] = fixture
      print(f'verified: {name} has the key structure of the {fixture} fixture')
  return verified


def registry_shapes(verified):
  out = {'timm_version': timm.__version__, 'torch_version': torch.__version__,
         'verified_structure': verified, 'models': {}}
  for name in REGISTRY_SHAPE_NAMES:
    model = registered(name)
    entry = {'state_dict': {k: list(v.shape) for k, v in model.state_dict().items()}}
    if name.startswith('vit'):
      entry['num_heads'] = model.blocks[0].attn.num_heads
    out['models'][name] = entry
  (FIXTURES / 'timm_registry_shapes.json').write_text(json.dumps(out, indent=0) + '\n')


def main():
  FIXTURES.mkdir(exist_ok=True)
  torch.set_num_threads(1)
  verified = check_registered_structures()
  vit_fixtures()
  convnext_fixtures()
  registry_shapes(verified)
  total = sum(p.stat().st_size for p in FIXTURES.iterdir())
  print(f'wrote {FIXTURES} ({total / 1e6:.2f} MB) with timm {timm.__version__}, '
        f'torch {torch.__version__}')


if __name__ == '__main__':
  main()
