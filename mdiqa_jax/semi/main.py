"""The mdiqa-semi command: flags, validation, the pipeline under the preemption watcher."""
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mdiqa_jax import cli
from mdiqa_jax import config_validation
from mdiqa_jax import preemption
from mdiqa_jax.semi.config import check_semi
from mdiqa_jax.semi.pipeline import run_pipeline


def _define_flags() -> Dict[str, Any]:
  return {
      'config': config_flags.DEFINE_config_file('config', None,
                                                'Config file (configs/semi/*.py).',
                                                lock_config=True),
      'workdir': flags.DEFINE_string('workdir', None, 'The pipeline directory.'),
      'stop_after': flags.DEFINE_enum('stop_after', None, ['teachers', 'pseudo_labels'],
                                      'End after this stage of round 0.'),
  }


def main(argv, values: Dict[str, Any]):
  """The command, given its flag values."""
  cli.no_arguments(argv)
  if values['config'] is None or values['workdir'] is None:
    raise app.UsageError('Give --config=configs/semi/NAME.py and --workdir=DIR.')
  config = values['config']
  config_validation.validate_config(config)
  try:
    check_semi(config.semi)
  except ValueError as e:
    raise config_validation.ConfigError(str(e)) from e
  with preemption.PreemptionWatcher():
    try:
      run_pipeline(config, values['workdir'], stop_after=values['stop_after'])
    except preemption.Preemption:
      logging.warning('SIGTERM: stopped; every stage writes atomically. Rerun the same '
                      'command to continue.')


def run():
  """Console entry point `mdiqa-semi`."""
  cli.run_command('mdiqa-semi', _define_flags, main)

