r"""The model shipped inside the package: the README's main job, ready to score.

  mdiqa_jax/bundled/default_model.msgpack   the parameters (flax msgpack)
  mdiqa_jax/bundled/default_model.json      its record: the run config, the
      sha256 and size of the msgpack, the dataset (name, builder version), the
      commit that trained it, its test metrics, and the real-CT transfer
      numbers of bench/real_ct_transfer.py run on it

`load()` reads both, checks the sha256 before deserialising, and restores the
parameters into the shapes of the model its config describes; any mismatch is
a `BundledModelError` naming the file. `mdiqa-predict` without --checkpoint and
`mdiqa_jax.Scorer.load()` use it. Regenerate it from a finished main job:

  mdiqa-train --config=configs/default.py --workdir=runs/default
  mdiqa-bundle --workdir=runs/default                       (mdiqa_jax/bundle.py)
  PYTHONPATH=. python bench/real_ct_transfer.py             (on the bundled file)
  mdiqa-bundle --workdir=runs/default \
      --transfer=bench/results/real_ct_transfer.json        (records its numbers)

Nothing here touches the network.
"""
import datetime
import functools
import hashlib
import json
import os
import subprocess
from typing import Any, Dict, Optional, Tuple

from flax import serialization
import jax
import ml_collections
import numpy as np

from mdiqa_jax import command_errors
from mdiqa_jax import files
from mdiqa_jax import models
from mdiqa_jax import train_step
from mdiqa_jax import workdir as workdir_lib
from mdiqa_jax.inference import checkpoint

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'bundled')
PARAMS_FILE = 'default_model.msgpack'
RECORD_FILE = 'default_model.json'
# The wheel must stay small; a bundled model larger than this is refused.
MAX_PARAMS_BYTES = 20 * 2**20


class BundledModelError(command_errors.UserError, ValueError):
  """The bundled model is missing, altered, or does not fit its config."""


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(functools.partial(f.read, 1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def read_record(directory: str = BUNDLED_DIR) -> Dict[str, Any]:
  """The bundled model's JSON record (see the module docstring)."""
  path = os.path.join(directory, RECORD_FILE)
  try:
    return files.read_json(path)
  except FileNotFoundError:
    raise BundledModelError(
        f'{path}: no bundled model in this installation; pass --checkpoint=<workdir> '
        '(or Scorer.load(<workdir>)), or regenerate it with mdiqa-bundle.') from None
  except (OSError, json.JSONDecodeError) as e:
    raise BundledModelError(f'{path}: cannot read the bundled model record ({e}).') from e


def load(directory: str = BUNDLED_DIR) -> Tuple[ml_collections.ConfigDict, Any,
                                                 Dict[str, Any]]:
  """(config, params, record) of the bundled model, its checksum verified.

  Raises:
    BundledModelError: naming the file that is missing, altered (sha256),
      or whose arrays do not fit the model of the recorded config.
  """
  record = read_record(directory)
  path = os.path.join(directory, PARAMS_FILE)
  if not os.path.isfile(path):
    raise BundledModelError(f'{path}: the bundled parameters are missing.')
  digest = sha256_of(path)
  if digest != record.get('sha256'):
    raise BundledModelError(f'{path}: sha256 {digest} differs from the recorded '
                            f'{record.get("sha256")}; the file was altered or truncated.')
  config = workdir_lib.config_from_values(record['config'])
  shapes = train_step.param_shapes(models.create_model(config), config.data.image_size)
  with open(path, 'rb') as f:
    state = serialization.msgpack_restore(f.read())
  try:
    params = serialization.from_state_dict(shapes, state)
  except (ValueError, KeyError, TypeError) as e:
    raise BundledModelError(f'{path}: the parameters do not fit the model of its config '
                            f'({command_errors.one_line(e)}).') from e
  mismatched = [
      f'{"/".join(str(k.key) for k in key)}: {np.shape(value)} vs {shape.shape}'
      for (key, value), shape in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                     jax.tree_util.tree_leaves(shapes))
      if np.shape(value) != shape.shape]
  if mismatched:
    raise BundledModelError(f'{path}: parameter shapes do not fit the model of its config: '
                            + ', '.join(mismatched[:5]))
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  return config, params, record


def _git_commit(path: str) -> Optional[str]:
  try:
    return subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _dataset_record(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  record = {'name': config.data.name}
  if config.data.name.startswith('ldct_iqa_synthetic'):
    from mdiqa_jax.data import synthetic_builder  # pylint: disable=g-import-not-at-top
    record['version'] = str(synthetic_builder.LdctIqaSynthetic.VERSION)
  return record


def _read_json(path: str, what: str) -> Dict[str, Any]:
  try:
    return files.read_json(path)
  except (OSError, json.JSONDecodeError) as e:
    raise BundledModelError(f'{path}: cannot read the {what} ({e}).') from e


def write(workdir: str, *, transfer: Optional[str] = None,
          directory: str = BUNDLED_DIR) -> Dict[str, Any]:
  """Bundles the best checkpoint of `workdir` into `directory` (atomically).

  Args:
    workdir: a finished training workdir with eval_test/metrics.json.
    transfer: bench/real_ct_transfer.py's JSON for this workdir's model
      (its 'checkpoint' must name `workdir`, or 'bundled:<sha256>' of the very
      parameters written), recorded when given.
    directory: where to write PARAMS_FILE and RECORD_FILE.

  Returns:
    the record written.
  """
  loaded = checkpoint.load_inference_checkpoint(workdir)
  metrics = _read_json(os.path.join(workdir, 'eval_test', 'metrics.json'), 'test metrics')
  payload = serialization.msgpack_serialize(
      jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), loaded.params))
  if len(payload) > MAX_PARAMS_BYTES:
    raise BundledModelError(f'{workdir}: the model is {len(payload) / 2**20:.1f} MiB, over '
                            f'the {MAX_PARAMS_BYTES / 2**20:.0f} MiB a wheel should carry.')
  record = {
      'config': json.loads(loaded.config.to_json_best_effort()),
      'sha256': hashlib.sha256(payload).hexdigest(),
      'params_bytes': len(payload),
      'num_params': int(sum(np.size(x) for x in jax.tree_util.tree_leaves(loaded.params))),
      'dataset': _dataset_record(loaded.config),
      # The checkout the workdir lives in (the README's runs/default), else this package's.
      'trained_by_commit': _git_commit(workdir) or _git_commit(os.path.dirname(__file__)),
      'checkpoint_step': loaded.step,
      'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'test_metrics': {k: metrics[k] for k in ('plcc', 'srocc', 'krocc', 'overall',
                                               'num_examples') if k in metrics},
  }
  if transfer:
    numbers = _read_json(transfer, 'real-CT transfer results')
    measured_on = str(numbers.get('checkpoint', ''))
    if (measured_on != 'bundled:' + record['sha256']
        and os.path.realpath(measured_on) != os.path.realpath(workdir)):
      raise BundledModelError(f'{transfer}: measured on {measured_on!r}, neither on '
                              f'{workdir!r} nor on these parameters bundled; rerun '
                              'bench/real_ct_transfer.py.')
    record['real_ct_transfer'] = {
        key: numbers[key] for key in ('pooled_spearman_dose', 'pooled_spearman_views',
                                      'mean_slice_spearman_dose', 'mean_slice_spearman_views')}
    record['real_ct_transfer']['per_slice'] = {
        s['name']: {'spearman_dose': s['spearman_dose'], 'spearman_views': s['spearman_views']}
        for s in numbers['slices']}
  os.makedirs(directory, exist_ok=True)
  with files.atomic_path(os.path.join(directory, PARAMS_FILE)) as temporary:
    with open(temporary, 'wb') as f:
      f.write(payload)
  files.write_json_atomically(os.path.join(directory, RECORD_FILE), record)
  return record
