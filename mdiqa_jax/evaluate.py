r"""Evaluation: predictions over a split, challenge metrics, report files.

  python -m mdiqa_jax.evaluate --workdir=DIR [--split=test]

loads the best checkpoint of a training workdir (or a step directory given as
--checkpoint), scores every slice of the split whole, at native resolution,
exactly as `mdiqa-predict` scores a file (`inference.scoring`), and writes
metrics.json, predictions.csv and scatter.png to <workdir>/eval_<split>/ (or
--output_dir) as one set (`evaluation.report`). A best step that does not
restore is reported and the next one is evaluated; metrics.json names the
step used. Errors a user can fix (no such workdir, split or checkpoint) end
in one line on stderr and status 1. This module is the command only; the
library is `mdiqa_jax.evaluation`.
"""
from typing import Any, Dict

from absl import app
from absl import flags

from mdiqa_jax import cli
from mdiqa_jax.evaluation.evaluate import compute_metrics, evaluate_checkpoint
from mdiqa_jax.evaluation.report import REPORT_FILES, format_metrics, write_report
from mdiqa_jax.inference.split import predict_split

# The library names, importable from here as before.
__all__ = ['REPORT_FILES', 'compute_metrics', 'evaluate_checkpoint', 'format_metrics',
           'main', 'predict_split', 'run', 'write_report']


def _define_flags() -> Dict[str, Any]:
  """Defines the command's flags (only when run as a command, so importing this
  module from train / predict, which define flags of the same names, is safe)."""
  return {
      'workdir': flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.'),
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'A step directory <workdir>/checkpoints/<step> to evaluate '
          "instead of the workdir's best checkpoint."),
      'split': flags.DEFINE_string('split', 'test', 'Split to evaluate (TFDS slicing allowed).'),
      'output_dir': flags.DEFINE_string(
          'output_dir', None, 'Report directory (default <workdir>/eval_<split>).'),
  }


def main(argv, values: Dict[str, Any]):
  """The command, given its flag values."""
  cli.no_arguments(argv)
  path = values['checkpoint'] or values['workdir']
  if not path:
    raise app.UsageError('Give --workdir=DIR (or --checkpoint=DIR/checkpoints/STEP).')
  metrics = evaluate_checkpoint(path, values['split'],
                                output_dir=values['output_dir'])
  print(f'{values["split"]}: {format_metrics(metrics)}')


def run():
  """Console entry point `mdiqa-evaluate`."""
  cli.run_command('mdiqa-evaluate', _define_flags, main)


if __name__ == '__main__':
  run()
