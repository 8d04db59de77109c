r"""Bundles a finished main job into the package (the model `mdiqa-predict` and
`mdiqa_jax.Scorer.load()` use when no checkpoint is given).

  mdiqa-bundle --workdir=runs/default [--transfer=bench/results/real_ct_transfer.json]
      [--output_dir=mdiqa_jax/bundled]

What is written and checked: `mdiqa_jax.inference.bundled`.
"""
import sys
from typing import Any, Dict, Sequence

from absl import app
from absl import flags

from mdiqa_jax import cli
from mdiqa_jax.inference import bundled


def _define_flags() -> Dict[str, Any]:
  return {
      'workdir': flags.DEFINE_string('workdir', None, 'Finished training workdir to bundle.'),
      'transfer': flags.DEFINE_string(
          'transfer', None, "bench/real_ct_transfer.py's JSON for that workdir's model."),
      'output_dir': flags.DEFINE_string('output_dir', bundled.BUNDLED_DIR,
                                        'Where to write the bundle (default: the package).'),
  }


def main(argv: Sequence[str], values: Dict[str, Any]) -> int:
  cli.no_arguments(argv)
  if not values['workdir']:
    raise app.UsageError('--workdir is required.')
  record = bundled.write(values['workdir'], transfer=values['transfer'],
                         directory=values['output_dir'])
  print(f'mdiqa-bundle: wrote {values["output_dir"]} ({record["params_bytes"] / 2**20:.2f} '
        f'MiB, sha256 {record["sha256"][:12]}..., test SROCC '
        f'{record["test_metrics"].get("srocc", float("nan")):.4f})', file=sys.stderr)
  return 0


def run():
  """Console entry point `mdiqa-bundle`."""
  cli.run_command('mdiqa-bundle', _define_flags, main)


if __name__ == '__main__':
  run()
