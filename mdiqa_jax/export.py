r"""Exports a trained model as StableHLO (jax.export) with its preprocessing spec.

  mdiqa-export --checkpoint DIR --output DIR [--batch_size 0] \
      [--platforms cpu,cuda,tpu] [--overwrite]
  python -m mdiqa_jax.export ...          (the same)

The folder holds the serialized model, its parameters, the preprocessing spec
and a loader that needs only jax and numpy (`inference/export.py` documents
it). The batch dimension is symbolic by default (any batch size);
--batch_size=N fixes it. This module is the command only; the library is
`mdiqa_jax.inference.export`.
"""
import os
import sys
from typing import Any, Dict, Sequence

from absl import app
from absl import flags

from mdiqa_jax import cli
from mdiqa_jax import command_errors
from mdiqa_jax.inference.checkpoint import CheckpointError
from mdiqa_jax.inference.export import (OUTPUT_KEYS, check_output_dir, export_checkpoint,
                                        export_model, load_exported, preprocessing_spec,
                                        write_export)

EXIT_FATAL = 1
# The library names, importable from here as before.
__all__ = ['OUTPUT_KEYS', 'check_output_dir', 'export_checkpoint', 'export_model',
           'load_exported', 'main', 'preprocessing_spec', 'run', 'write_export']


def _define_flags() -> Dict[str, Any]:
  """Defines the flags when run as a command (importing export defines none)."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'Training workdir (its best checkpoint) or a step directory.'),
      'output': flags.DEFINE_string('output', None, 'Export folder to write.'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', 0, 'Fixed batch size; 0 = symbolic (any batch size).'),
      'platforms': flags.DEFINE_list(
          'platforms', ['cpu'], 'Platforms to lower for: cpu, cuda, rocm, tpu.'),
      'overwrite': flags.DEFINE_bool('overwrite', False, 'Replace a previous export folder.'),
  }


def main(argv: Sequence[str], values: Dict[str, Any]) -> int:
  """The command, given its flag values; returns the exit status."""
  cli.no_arguments(argv)
  checkpoint, output, batch_size = values['checkpoint'], values['output'], values['batch_size']
  if not checkpoint or not output:
    raise app.UsageError('--checkpoint and --output are required.')
  if batch_size < 0:
    raise app.UsageError(f'--batch_size must be >= 0, got {batch_size}.')
  try:
    export_checkpoint(checkpoint, output, batch_size=batch_size or None,
                      platforms=values['platforms'], overwrite=values['overwrite'])
  except (CheckpointError, FileExistsError) as e:
    print(f'mdiqa-export: error: {command_errors.one_line(e)}', file=sys.stderr)
    return EXIT_FATAL
  print(f'mdiqa-export: wrote {os.path.abspath(output)}', file=sys.stderr)
  return 0


def run():
  """Console entry point `mdiqa-export`."""
  cli.run_command('mdiqa-export', _define_flags, main)


if __name__ == '__main__':
  run()
