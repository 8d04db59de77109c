r"""Training job: build the data, train, checkpoint, evaluate on the test split.

  python -m mdiqa_jax.train ...        (the same as mdiqa-train)

This module is the command only (flags, distributed start-up); the job is
`mdiqa_jax.training.loop.train_and_evaluate`, whose docstring says what it does.
"""
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mdiqa_jax import cli
from mdiqa_jax.training.loop import train_and_evaluate
from mdiqa_jax.training.progress import NonFiniteLossError
from mdiqa_jax.training.setup import load_pretrained_backbones, total_train_steps

# The library names, importable from here as before.
__all__ = ['NonFiniteLossError', 'load_pretrained_backbones', 'main', 'run',
           'total_train_steps', 'train_and_evaluate']


def _define_flags() -> Dict[str, Any]:
  """Defines the command's flags (only when run as a command)."""
  return {
      'config': config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                                lock_config=True),
      'workdir': flags.DEFINE_string('workdir', None,
                                     'Directory for checkpoints, logs and reports.'),
      'coordinator_address': flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0, for '
          'jax.distributed.initialize when config.distributed (auto-detected if unset).'),
      'num_processes': flags.DEFINE_integer(
          'num_processes', None, 'Number of processes (with --coordinator_address).'),
      'process_id': flags.DEFINE_integer('process_id', None,
                                         'This process (with --coordinator_address).'),
  }


def main(argv, values: Dict[str, Any]):
  """The command, given its flag values."""
  cli.no_arguments(argv)
  config, workdir = values['config'], values['workdir']
  if config is None or workdir is None:
    raise app.UsageError('Give --config=configs/NAME.py and --workdir=DIR.')
  if config.distributed:
    jax.distributed.initialize(coordinator_address=values['coordinator_address'],
                               num_processes=values['num_processes'],
                               process_id=values['process_id'])
  logging.info('JAX %s: process %d/%d, %d local / %d global device(s) (%s).',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  train_and_evaluate(config, workdir)


def run():
  """Console entry point `mdiqa-train`."""
  cli.run_command('mdiqa-train', _define_flags, main)


if __name__ == '__main__':
  run()
