"""Child process of the checkpoint damage test: reruns training on damaged workdirs.

  python resume_worker.py DATA_DIR WORKDIR...

Each WORKDIR is rerun with `train.train_and_evaluate` and the
real_layout_config SHORT_RUN settings (the run that wrote it), in one process
so that the model compiles once. Before each run a line '=== WORKDIR' goes to
stderr (to split the log by run); after it, one JSON line
{"workdir": ..., "step": ..., "error": ...} to stdout.
"""
import json
import sys

from absl import logging

from mdiqa_jax import checkpointing
from mdiqa_jax import train

import real_layout_config


def main(data_dir: str, workdirs: list) -> None:
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  checkpointing.quiet_library_logging()
  for workdir in workdirs:
    print(f'=== {workdir}', file=sys.stderr, flush=True)
    config = real_layout_config.apply(real_layout_config.get_config(data_dir),
                                      real_layout_config.SHORT_RUN)
    try:
      result = train.train_and_evaluate(config, workdir)
      outcome = {'workdir': workdir, 'step': result['step'], 'error': None}
    except Exception as e:  # pylint: disable=broad-except  (what the test looks for)
      outcome = {'workdir': workdir, 'step': None, 'error': f'{type(e).__name__}: {e}'}
    print(json.dumps(outcome), flush=True)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
