"""`run_sweep`: plan every (config, seed), run what is not finished, write the report."""
import os
from typing import Any, Dict, List, Sequence


from mdiqa_jax import files

from mdiqa_jax.tools.sweep.execute import execute
from mdiqa_jax.tools.sweep.plan import RESULT_FILE, expand_config_patterns, plan_run
from mdiqa_jax.tools.sweep.report import write_report
from mdiqa_jax.tools.sweep.stats import read_predictions, uncertainty_check


def run_sweep(config_patterns: Sequence[str], seeds: Sequence[int], workdir: str,
              results_path: str, *, overrides: Sequence[str] = (), notes: str = '',
              report_only: bool = False, command: str = '') -> List[Dict[str, Any]]:
  """Runs every (config, seed) not finished yet, then writes the report.

  The sweep command is kept in <workdir>/sweep_command.json; --report_only
  reports that command, not its own.

  Returns the results of the finished runs, in (seed, config) order.
  """
  workdir = os.path.abspath(workdir)
  command_path = os.path.join(workdir, 'sweep_command.json')
  if report_only:
    command = files.read_json(command_path)['command'] if os.path.exists(command_path) else command
  else:
    os.makedirs(workdir, exist_ok=True)
    files.write_json_atomically(command_path, {'command': command})
  # Seed-major order: every row gets its first seed before any gets its second,
  # so a sweep stopped early still fills the whole table.
  plans = [plan_run(config_file, seed, overrides, workdir)
           for seed in seeds for config_file in expand_config_patterns(config_patterns)]
  results = []
  finished: Dict[str, Dict[str, Any]] = {}
  for plan in plans:
    result_path = os.path.join(plan['run_dir'], RESULT_FILE)
    was_finished = os.path.exists(result_path)
    if report_only or was_finished:
      result = files.read_json(result_path) if was_finished else None
    else:
      result = execute(plan, finished)
    if result is None:
      continue
    if 'uncertainty' not in result:
      result['uncertainty'] = uncertainty_check(read_predictions(result['predictions']))
    finished.setdefault(plan['fingerprint'], result)
    results.append(result)
    if not (report_only or was_finished):  # The report follows the sweep as it goes.
      write_report(results, plans, results_path, command=command, notes=notes)
  write_report(results, plans, results_path, command=command, notes=notes)
  return results
