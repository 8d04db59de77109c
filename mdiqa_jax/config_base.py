"""Shared config defaults; every file in configs/ starts from `base_config()`.

All hyper-parameters the paper leaves open live here with a documented default.
Files in configs/ override fields; the command line overrides those
(`--config.field=value`). Code reads the config at the edge (train.py,
`models.create_model`) and passes plain values inward.
"""
import json
from typing import Any

import ml_collections


def _unset(field_type: type) -> ml_collections.FieldReference:
  """A None field that the command line can still set (--config.a.b=value)."""
  return ml_collections.FieldReference(None, field_type=field_type)


def base_config() -> ml_collections.ConfigDict:
  """Returns the defaults: tiny CPU model on the small synthetic dataset.

  These are the embedded default's settings (configs/default.py), so every
  ablation and semi-supervised row starts from the main job's model and schedule.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- Data -------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.name = 'ldct_iqa_synthetic/clinical'  # TFDS name[/builder config].
  config.data.data_dir = _unset(str)
  config.data.manual_dir = _unset(str)
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.test_split = 'test'
  config.data.unlabeled_split = 'unlabeled'
  # The model sees square tiles of image_size NATIVE pixels, never a resized
  # slice (data/preprocess.py): one random tile per example in training, every
  # tile of the slice when scoring (slice_scoring.py).
  config.data.image_size = 96       # Tile side, pixels (a multiple of 32).
  # Pixel spacing (mm) the model is trained on: the synthetic default's range
  # (adult abdomens 0.6-0.95 mm, small patients 0.4-0.6 mm; data/synthetic.py).
  # Slices outside it are resampled to its nearest end when scored; recorded
  # in every checkpoint's config.json and in exports.
  config.data.pixel_mm_range = (0.4, 0.95)
  # Spacing assumed for images that carry none (TIFF, PNG, .npy, and the
  # challenge's TIFFs), mm; mdiqa-predict --pixel_mm overrides it.
  config.data.pixel_mm = 0.75
  config.data.train_min_body_fraction = 0.5  # Training tiles: at least this much body.
  config.data.min_body_fraction = 0.05  # Scoring: tiles with less body are skipped.
  config.data.random_flip = True    # Train-time horizontal + vertical flips.
  config.data.num_workers = 0       # grain worker processes (0 = in-process).

  # --- Model ------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.use_vit = True          # Ablation: ViT branch on/off.
  config.model.use_cnn = True          # Ablation: ConvNeXt branch on/off.
  config.model.use_alignment = True    # Ablation: deformable alignment vs plain fusion.
  config.model.dtype = 'float32'       # Compute dtype ('bfloat16' for mixed precision).
  config.model.remat = False           # Recompute each backbone block in backward (memory for time).
  # Inputs in [0, 1] are standardised as (x - mean) / std before both branches.
  # ImageNet-pretrained backbones with summed-RGB stems want grey ImageNet
  # statistics instead (mean 0.449, std 0.226).
  config.model.input_mean = 0.5
  config.model.input_std = 0.5

  # The token branch: a backbone from models.BACKBONES, its architecture the
  # preset `variant` (models/vit.py: tiny_cpu, Ti/16, S/16, B/16, B/8); each
  # architecture field below that is not None overrides the preset.
  config.model.vit = ml_collections.ConfigDict()
  config.model.vit.name = 'vit'
  config.model.vit.variant = 'tiny_cpu'  # 16-px patches, width 64, 4 blocks, 2 heads.
  config.model.vit.patch_size = _unset(int)
  config.model.vit.width = _unset(int)
  config.model.vit.depth = _unset(int)
  config.model.vit.num_heads = _unset(int)
  config.model.vit.mlp_ratio = _unset(float)
  config.model.vit.feature_blocks = _unset(tuple)  # 0-based blocks whose tokens are used.
  config.model.vit.dropout = 0.0
  config.model.vit.init_from = _unset(str)

  # The stage branch; presets in models/convnext.py (tiny_cpu, atto, tiny, small, base).
  config.model.convnext = ml_collections.ConfigDict()
  config.model.convnext.name = 'convnext'
  config.model.convnext.variant = 'tiny_cpu'  # Depths (1, 1, 1, 1), widths 16..128.
  config.model.convnext.depths = _unset(tuple)
  config.model.convnext.widths = _unset(tuple)
  config.model.convnext.drop_path = 0.0
  config.model.convnext.init_from = _unset(str)

  config.model.align = ml_collections.ConfigDict()
  config.model.align.num_scales = 3    # S: the first S ConvNeXt stages (finest first).
  config.model.align.kernel_size = 3   # N sampling points = kernel_size**2.
  config.model.align.offset_groups = 1
  config.model.align.width = 64        # Channels of each aligned map.
  # How the offset-predicting convolution sees the ViT tokens: 'factored' at
  # their own resolution (ops/resized_conv.py, ~18x faster at the finest
  # scale) | 'resize': upsampled first. The same function to float rounding.
  config.model.align.condition = 'factored'

  # The head, from models.head.HEADS: 'distribution' (K Gaussian-target heads)
  # | 'point'; `kwargs` are the named head's own arguments.
  config.model.head = ml_collections.ConfigDict()
  config.model.head.name = 'distribution'
  config.model.head.hidden = 64        # Fused per-patch width and head MLP width.
  config.model.head.score_min = 0.0    # The score bins, shared by head, loss and scoring.
  config.model.head.score_max = 4.0
  config.model.head.bin_width = 0.2    # 21 bins on [0, 4], the labels' 0.2 steps.
  config.model.head.kwargs = ml_collections.ConfigDict()
  config.model.head.kwargs.num_distributions = 3  # K: one per config.loss.kwargs.sigmas.

  # --- Loss -------------------------------------------------------------
  # From training.losses.LOSSES: 'gaussian_ce' | 'gaussian_kl' | 'l1' | 'mse';
  # `kwargs` are the named loss's own arguments.
  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'gaussian_ce'
  config.loss.kwargs = ml_collections.ConfigDict()
  config.loss.kwargs.sigmas = (0.1, 0.25, 0.5)  # K label-uncertainty widths, score units.
  config.loss.kwargs.scale_weights = (1.0, 1.0, 1.0)
  config.loss.kwargs.point_weight = 0.0  # Extra L1 on the expected score (0 = off).

  # --- Optimisation -----------------------------------------------------
  # From training.optim.OPTIMIZERS: 'adam' (paper) | 'adamw' | 'sgd'; `kwargs`
  # go to the optax constructor (adamw: weight_decay).
  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adam'
  config.optim.kwargs = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  # (regex, multiplier) pairs over '/'-joined parameter paths; the first match
  # sets the parameter's learning rate to multiplier x the schedule, e.g.
  # (('^(vit|convnext)/', 0.1),) for pretrained backbones.
  config.optim.lr_multipliers = ()
  config.optim.warmup_steps = 50
  config.optim.schedule = 'cosine'     # 'cosine' | 'constant'.
  config.optim.grad_clip_norm = 1.0
  config.optim.ema_decay = 0.0         # 0 = no EMA of params.

  # --- Training loop ----------------------------------------------------
  config.batch_size = 16               # Global batch size (all hosts, all devices).
  config.eval_batch_size = 32          # Tiles per jitted scoring call (per host).
  config.num_epochs = 32               # configs/paper.py: the paper's 30.
  config.num_train_steps = -1          # > 0 overrides num_epochs (optimiser steps).
  config.log_every_steps = 20
  config.eval_every_steps = 160        # Every 4 epochs of the small train split.
  config.checkpoint_every_steps = 160
  config.keep_checkpoints = 2          # Last N kept ...
  config.keep_best = 1                 # ... plus best-k by validation SROCC.
  config.async_checkpointing = True    # Orbax writes in a background thread.
  # 'shard_map' (jit + shard_map over a device Mesh) | 'pmap'. The same per-device
  # step runs under either; bench/train_bench.py measured them equal (JAX 0.10
  # implements pmap with shard_map), and shard_map is JAX's supported path.
  config.parallel = 'shard_map'
  config.distributed = False           # Call jax.distributed.initialize().
  return config


def config_json(config: ml_collections.ConfigDict) -> Any:
  """The config as plain JSON values, keys sorted (for comparing and recording)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


# The pretrained backbones' parameter paths (before lr_multipliers existed,
# config.optim.backbone_lr_multiplier applied to these).
_OLD_BACKBONE_PATHS = '^(vit|convnext)/'


def upgrade(values: dict) -> dict:
  """A run config saved before the components were named (config.json of an
  older workdir) in today's fields; today's configs are returned unchanged.

  model.head_type -> model.head.name (+ kwargs.num_distributions = K);
  loss.type + sigmas / scale_weights / point_weight -> loss.name + kwargs;
  optim.backbone_lr_multiplier -> lr_multipliers, optim.weight_decay ->
  kwargs (adamw); ViT / ConvNeXt sizes stay explicit (variant None).
  """
  model, loss, optim = values['model'], values['loss'], values['optim']
  if 'head_type' in model:
    distribution = model.pop('head_type') == 'distribution'
    model['head'].update(name='distribution' if distribution else 'point', kwargs=(
        {'num_distributions': len(loss['sigmas'])} if distribution else {}))
    for name in ('vit', 'convnext'):
      model[name].update(name=name, variant=None)
  if 'type' in loss:
    name = loss.pop('type')
    kwargs = {key: loss.pop(key) for key in ('sigmas', 'scale_weights', 'point_weight')}
    loss.update(name=name, kwargs=kwargs if name.startswith('gaussian') else {})
  if 'backbone_lr_multiplier' in optim:
    multiplier = optim.pop('backbone_lr_multiplier')
    weight_decay = optim.pop('weight_decay')
    optim['lr_multipliers'] = [] if multiplier == 1 else [[_OLD_BACKBONE_PATHS, multiplier]]
    optim['kwargs'] = {'weight_decay': weight_decay} if optim['name'] == 'adamw' else {}
  return values
