r"""The paper's setting: MD-IQA with ViT-B/16 + ConvNeXt-T, 30 epochs, Adam.

  python -m mdiqa_jax.train --config=configs/paper.py --workdir=DIR \
      --config.data.manual_dir=/data/ldctiqac2023 \
      --config.model.vit.init_from=/data/vit_b16 \
      --config.model.convnext.init_from=/data/convnext_t
  python -m mdiqa_jax.train --config=configs/paper.py:synthetic --workdir=DIR

The paper (arXiv 2311.08024) names the parts but not their sizes; the choices
made here, each a config field:
- Backbones: ViT-B/16 (AugReg / timm `vit_base_patch16_224`) and ConvNeXt-T
  (`convnext_tiny`), both ImageNet-pretrained in the paper. No weights are
  downloaded: convert them once with `mdiqa-convert` (or point `init_from` at
  the timm .safetensors / big_vision .npz file) and pass the paths as above;
  without them both branches start from random weights.
- Input: 448 x 448 tiles of native pixels (training: one random tile of a
  512 x 512 slice; scoring: the 2 x 2 overlapping tiles that cover it,
  pooled by patch weight; mdiqa_jax/inference/); both backbones take any
  multiple of 32. ViT features: blocks 4, 8, 12; the first three ConvNeXt
  stages are aligned to them.
- Pixel spacing: the challenge's TIFFs carry none. They come from the Mayo
  abdominal scans (512 x 512 over a field of view of about 340-380 mm), so
  0.7 mm is assumed (config.data.pixel_mm) and the model's trained range is
  that one value: a scan at another spacing is resampled to 0.7 mm when
  scored. The synthetic variant trains on 0.4-0.95 mm like the default.
- Optimiser: Adam, learning rate 1e-4 for the new layers and 1e-5 for the
  pretrained backbones (multiplier 0.1), 100 warm-up steps then cosine decay,
  gradients clipped to norm 1, global batch 16, 30 epochs.
- Grey inputs are standardised with ImageNet's grey statistics, which is what
  the summed-RGB patch/stem kernels of the converted backbones expect.

`ldctiqac2023` has labels for its 1000 training slices only: 900 train and
100 held out for model selection (`train[:900]` / `train[900:]`); the test
split is evaluated when the organisers' test release is in manual_dir.
The `synthetic` variant trains on 'ldct_iqa_synthetic/challenge', the
simulated stand-in of the same size and resolution (1000 / 200 / 300).
For GPUs with bfloat16, add --config.model.dtype=bfloat16 (float32 params).
"""
from mdiqa_jax.config_base import base_config

VARIANTS = ('real', 'synthetic')


def get_config(arg=None):
  variant = arg or 'real'
  if variant not in VARIANTS:
    raise ValueError(f'configs/paper.py:{variant}: expected one of {VARIANTS}.')
  config = base_config()

  if variant == 'real':
    config.data.name = 'ldctiqac2023'
    config.data.train_split = 'train[:900]'
    config.data.eval_split = 'train[900:]'
    config.data.pixel_mm = 0.7
    config.data.pixel_mm_range = (0.7, 0.7)
  else:
    config.data.name = 'ldct_iqa_synthetic/challenge'
  config.data.image_size = 448

  config.model.input_mean = 0.449
  config.model.input_std = 0.226
  config.model.vit.variant = 'B/16'  # Features of blocks 4, 8, 12: (3, 7, 11).
  config.model.convnext.variant = 'tiny'
  config.model.convnext.drop_path = 0.1
  config.model.align.update(num_scales=3, kernel_size=3, width=256)
  config.model.head.hidden = 256

  config.optim.name = 'adam'
  config.optim.learning_rate = 1e-4
  config.optim.lr_multipliers = (('^(vit|convnext)/', 0.1),)  # Pretrained backbones.
  config.optim.warmup_steps = 100
  config.optim.schedule = 'cosine'
  config.optim.grad_clip_norm = 1.0

  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_epochs = 30
  config.log_every_steps = 20
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  config.keep_best = 1
  return config
