r"""Runs a list of configs over seeds and writes the results report.

  python -m mdiqa_jax.sweep --configs='configs/ablations/*.py,configs/semi/*.py' \
      --seeds=0,1,2 --workdir=runs/sweep --results=docs/RESULTS.md \
      [--set=num_train_steps=150 --set=data.data_dir=/data/tfds ...] \
      [--notes=docs/results_notes.md] [--report_only]

This module is the command only; what a sweep runs, where and how it reports
is said by the library, `mdiqa_jax.tools.sweep`.
"""
import shlex
import sys
from typing import Any, Dict

from absl import app
from absl import flags

from mdiqa_jax import cli
from mdiqa_jax.tools.sweep.plan import (FAILED_FILE, RESULT_FILE, expand_config_patterns,
                                        load_config, parse_override)
from mdiqa_jax.tools.sweep.report import write_report
from mdiqa_jax.tools.sweep.run import run_sweep
from mdiqa_jax.tools.sweep.stats import (calibration_bins, compare, read_predictions,
                                         uncertainty_check)

# The library names, importable from here as before.
__all__ = ['FAILED_FILE', 'RESULT_FILE', 'calibration_bins', 'compare',
           'expand_config_patterns', 'load_config', 'parse_override', 'read_predictions',
           'run', 'run_sweep', 'uncertainty_check', 'write_report']


def _define_flags() -> Dict[str, Any]:
  return {
      'configs': flags.DEFINE_list('configs', None,
                                   'Config files or glob patterns, comma-separated.'),
      'seeds': flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds, comma-separated.'),
      'workdir': flags.DEFINE_string('workdir', None, 'One sub-directory per run.'),
      'results': flags.DEFINE_string('results', 'docs/RESULTS.md', 'The Markdown report.'),
      'set': flags.DEFINE_multi_string(
          'set', [], 'FIELD=VALUE config override for every run (repeatable), e.g. '
          '--set=num_train_steps=150.'),
      'notes': flags.DEFINE_string('notes', None, 'Markdown file inserted into the report.'),
      'report_only': flags.DEFINE_bool('report_only', False,
                                       'Write the report from finished runs; run nothing.'),
  }


def main(argv, values: Dict[str, Any]):
  """The command, given its flag values."""
  cli.no_arguments(argv)
  if not values['configs'] or not values['workdir']:
    raise app.UsageError('Give --configs=PATTERN[,PATTERN...] and --workdir=DIR.')
  try:
    seeds = [int(seed) for seed in values['seeds']]
  except ValueError as e:
    raise app.UsageError(f'--seeds={",".join(values["seeds"])}: expected integers.') from e
  notes = ''
  if values['notes']:
    with open(values['notes'], encoding='utf-8') as f:
      notes = f.read()
  command = shlex.join(['python', '-m', 'mdiqa_jax.sweep'] + sys.argv[1:])
  run_sweep(values['configs'], seeds, values['workdir'], values['results'],
            overrides=values['set'], notes=notes, report_only=values['report_only'],
            command=command)


def run():
  """`python -m mdiqa_jax.sweep`."""
  cli.run_command('mdiqa_jax.sweep', _define_flags, main)


if __name__ == '__main__':
  run()
