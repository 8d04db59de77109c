"""Running one planned run as its own command (or reusing an identical finished one)."""
import os
import shlex
import subprocess
import time
from typing import Any, Dict


from mdiqa_jax import files

from mdiqa_jax.tools.sweep.plan import FAILED_FILE, RESULT_FILE


def _outputs(plan: Dict[str, Any]) -> Dict[str, Any]:
  """Test metrics and predictions file of a finished command."""
  run_dir = plan['run_dir']
  if plan['kind'] == 'semi':
    result = files.read_json(os.path.join(run_dir, 'result.json'))
    rounds = result['rounds']
    return {'test': result['test'], 'predictions': result['test_predictions'],
            'pseudo_labels': {
                'quality': rounds[-1]['pseudo_label_quality'],
                'selection': rounds[-1]['students'][0]['selection']},
            'teacher_wall_seconds': sum(
                files.read_json(os.path.join(d, 'done.json'))['wall_seconds']
                for d in result['teacher_workdirs'])}
  eval_dir = os.path.join(run_dir, f'eval_{plan["test_split"]}')
  return {'test': files.read_json(os.path.join(eval_dir, 'metrics.json')),
          'predictions': os.path.join(eval_dir, 'predictions.csv')}


def execute(plan: Dict[str, Any], finished: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Runs one planned command; returns what it writes to sweep_result.json (None if
  the command did not finish).

  `finished` maps config fingerprints to results of finished runs (a run
  with an identical config reuses one).
  """
  result_path = os.path.join(plan['run_dir'], RESULT_FILE)
  os.makedirs(plan['run_dir'], exist_ok=True)
  same = finished.get(plan['fingerprint'])
  if same is not None:
    result = dict(same, same_as=same['run_dir'], same_as_name=same['name'],
                  run_dir=plan['run_dir'], name=plan['name'], config_file=plan['config_file'])
    files.write_json_atomically(result_path, result)
    print(f'[sweep] {plan["name"]} seed {plan["seed"]}: same config as {same["run_dir"]}',
          flush=True)
    return result
  command = plan['command']
  print(f'[sweep] {plan["name"]} seed {plan["seed"]}: {shlex.join(command)}', flush=True)
  start = time.time()
  with open(os.path.join(plan['run_dir'], 'run.log'), 'a', encoding='utf-8') as log:
    returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  wall_seconds = time.time() - start
  outputs, reason = None, f'exit status {returncode}'
  if not returncode:
    try:
      outputs = _outputs(plan)
    except FileNotFoundError as e:  # A preempted run exits 0 before its test evaluation.
      reason = f'exit status 0 but no test results ({e})'
  if outputs is None:
    files.write_json_atomically(os.path.join(plan['run_dir'], FAILED_FILE),
                {'reason': reason, 'command': command, 'wall_seconds': wall_seconds})
    print(f'[sweep] NOT FINISHED ({reason}) after {wall_seconds:.0f} s; see '
          f'{plan["run_dir"]}/run.log; rerun the sweep to resume it.', flush=True)
    return None
  result = dict(outputs, name=plan['name'], seed=plan['seed'],
                config_file=plan['config_file'], run_dir=plan['run_dir'],
                command=shlex.join(command), wall_seconds=wall_seconds,
                fingerprint=plan['fingerprint'])
  files.write_json_atomically(result_path, result)
  if os.path.exists(os.path.join(plan['run_dir'], FAILED_FILE)):
    os.remove(os.path.join(plan['run_dir'], FAILED_FILE))
  print(f'[sweep] done in {wall_seconds:.0f} s: overall {result["test"]["overall"]:.4f}',
        flush=True)
  return result
