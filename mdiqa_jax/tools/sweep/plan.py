"""Planning a sweep: config files x seeds -> one run each (workdir, command, fingerprint)."""
import ast
import glob
import hashlib
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Sequence

import ml_collections

from mdiqa_jax import config_base

RESULT_FILE = 'sweep_result.json'
FAILED_FILE = 'sweep_failed.json'
METRICS = ('plcc', 'srocc', 'krocc', 'overall')


def expand_config_patterns(patterns: Sequence[str]) -> List[str]:
  """Glob patterns / paths -> sorted, de-duplicated config files (errors name the pattern)."""
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise ValueError(f'--configs: {pattern!r} matches no file.')
    files.extend(m for m in matches if m not in files)
  return files


def run_name(config_file: str) -> str:
  """'configs/ablations/full.py' -> 'ablations/full'."""
  folder = os.path.basename(os.path.dirname(os.path.abspath(config_file)))
  return f'{folder}/{os.path.splitext(os.path.basename(config_file))[0]}'


def parse_override(override: str) -> tuple:
  """'optim.learning_rate=3e-4' -> ('optim.learning_rate', 0.0003) (strings stay strings)."""
  field, separator, text = override.partition('=')
  if not separator or not field:
    raise ValueError(f'--set={override!r}: expected FIELD=VALUE, e.g. num_train_steps=150.')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return field, value


def load_config(config_file: str, seed: int, overrides: Sequence[str]
                ) -> ml_collections.ConfigDict:
  """The config a run's command resolves: get_config(), seed, then the overrides."""
  spec = importlib.util.spec_from_file_location(
      'sweep_config_' + hashlib.sha1(config_file.encode()).hexdigest()[:8], config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.seed = seed
  for override in overrides:
    field, value = parse_override(override)
    parent = config
    *path, leaf = field.split('.')
    for name in path:
      parent = parent[name]
    if leaf not in parent:
      raise ValueError(f'--set={override!r}: {config_file} has no field {field!r}.')
    parent[leaf] = value
  return config


def _fingerprint(value: Any) -> str:
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def plan_run(config_file: str, seed: int, overrides: Sequence[str], workdir: str
             ) -> Dict[str, Any]:
  """Everything needed to start, skip or report one run."""
  config = load_config(config_file, seed, overrides)
  name = run_name(config_file)
  run_dir = os.path.join(workdir, name, f'seed_{seed}')
  is_semi = 'semi' in config
  arguments = [f'--config={config_file}', f'--config.seed={seed}']
  arguments += [f'--config.{field}={text}' for field, _, text in
                (override.partition('=') for override in overrides)]
  if is_semi:
    from mdiqa_jax import semi  # pylint: disable=g-import-not-at-top
    teachers = [config_base.config_json(c) for c in semi.teacher_configs(config)]
    shared_dir = os.path.join(workdir, f'teachers_{_fingerprint(teachers)}')
    arguments.append(f'--config.semi.shared_dir={shared_dir}')
    with config.unlocked():
      config.semi.shared_dir = shared_dir
  arguments.append(f'--workdir={run_dir}')
  module = 'mdiqa_jax.semi' if is_semi else 'mdiqa_jax.train'
  return {'name': name, 'config_file': config_file, 'seed': seed, 'run_dir': run_dir,
          'kind': 'semi' if is_semi else 'train', 'module': module,
          'command': [sys.executable, '-m', module] + arguments,
          'fingerprint': _fingerprint(config_base.config_json(config)),
          'description': _first_docstring_line(config_file),
          'head': config.model.head.name, 'test_split': config.data.test_split}


def _first_docstring_line(config_file: str) -> str:
  with open(config_file, encoding='utf-8') as f:
    docstring = ast.get_docstring(ast.parse(f.read())) or ''
  return docstring.strip().splitlines()[0] if docstring.strip() else ''
