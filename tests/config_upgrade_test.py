"""Workdirs written before the components were named still load for prediction."""
import json

import jax
import pytest

from mdiqa_jax import checkpointing
from mdiqa_jax import config_base
from mdiqa_jax import models
from mdiqa_jax import train_step

# The model / loss / optim sections of configs/default.py as config.json held them
# before heads, losses and optimisers were chosen by name (commit c2e895f).
OLD_SECTIONS = {
    'model': {
        'use_vit': True, 'use_cnn': True, 'use_alignment': True, 'head_type': 'distribution',
        'dtype': 'float32', 'remat': False, 'input_mean': 0.5, 'input_std': 0.5,
        'vit': {'patch_size': 16, 'width': 64, 'depth': 4, 'num_heads': 2, 'mlp_ratio': 4.0,
                'feature_blocks': [1, 2, 3], 'dropout': 0.0, 'init_from': None},
        'convnext': {'depths': [1, 1, 1, 1], 'widths': [16, 32, 64, 128], 'drop_path': 0.0,
                     'init_from': None},
        'align': {'num_scales': 3, 'kernel_size': 3, 'offset_groups': 1, 'width': 64},
        'head': {'hidden': 64, 'score_min': 0.0, 'score_max': 4.0, 'bin_width': 0.2},
    },
    'loss': {'type': 'gaussian_ce', 'sigmas': [0.1, 0.25, 0.5],
             'scale_weights': [1.0, 1.0, 1.0], 'point_weight': 0.0},
    'optim': {'name': 'adamw', 'learning_rate': 1e-3, 'backbone_lr_multiplier': 0.1,
              'weight_decay': 0.05, 'warmup_steps': 50, 'schedule': 'cosine',
              'grad_clip_norm': 1.0, 'ema_decay': 0.0},
}


def _old_workdir(tmp_path):
  values = json.loads(config_base.base_config().to_json_best_effort())
  values.update(json.loads(json.dumps(OLD_SECTIONS)))
  (tmp_path / 'config.json').write_text(json.dumps(values))
  return str(tmp_path)


def _param_shapes(config):
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda rng: train_step.init_params(model, rng, 96),
                          jax.random.PRNGKey(0))
  return jax.tree_util.tree_map(lambda x: x.shape, shapes)


def test_an_old_config_json_builds_the_same_model_as_todays_default(tmp_path):
  config = checkpointing.load_config(_old_workdir(tmp_path))
  assert config.model.head.name == 'distribution'
  assert dict(config.model.head.kwargs) == {'num_distributions': 3}
  assert config.loss.name == 'gaussian_ce' and config.loss.kwargs.sigmas == (0.1, 0.25, 0.5)
  assert config.optim.lr_multipliers == (('^(vit|convnext)/', 0.1),)
  assert dict(config.optim.kwargs) == {'weight_decay': 0.05}
  assert _param_shapes(config) == _param_shapes(config_base.base_config())


def test_an_old_workdir_is_refused_for_resuming_with_a_one_line_reason(tmp_path):
  workdir = _old_workdir(tmp_path)
  with pytest.raises(checkpointing.CheckpointError, match='trained by an older mdiqa_jax'):
    checkpointing.check_resumable(workdir)
  checkpointing.save_config(config_base.base_config(), workdir)
  checkpointing.check_resumable(workdir)  # Today's config.json resumes.
