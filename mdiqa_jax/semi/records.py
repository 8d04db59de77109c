"""The files of a semi-supervised workdir: the stage log and the pseudo-label datasets.

  semi_log.jsonl                 stage events (start / done / skip), one JSON per line
  pseudo_labels/                 pseudo_labels.npz + provenance.json, one directory,
                                 written whole or not at all
"""
import json
import os
import time
from typing import Any, Dict, List

from absl import logging
import numpy as np

from mdiqa_jax import files

STAGES = ('teachers', 'pseudo_labels', 'students')
LOG_FILE = 'semi_log.jsonl'
DONE_FILE = 'done.json'
RESULT_FILE = 'result.json'
PSEUDO_LABELS_FILE = 'pseudo_labels.npz'
PROVENANCE_FILE = 'provenance.json'
SELECTION_FILE = 'selection.npz'
TEACHER_SPEC_FILE = 'teacher_spec.json'


def log_event(workdir: str, stage: str, event: str, **details: Any) -> None:
  """Appends {'stage', 'event', 'time', ...} to <workdir>/semi_log.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  record = dict(details, stage=stage, event=event, time=time.time())
  with open(os.path.join(workdir, LOG_FILE), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
  logging.info('semi %s: %s %s', stage, event, details.get('path', ''))


def read_log(workdir: str) -> List[Dict[str, Any]]:
  """The stage events of a workdir, oldest first."""
  path = os.path.join(workdir, LOG_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def write_pseudo_label_dataset(output_dir: str, arrays: Dict[str, np.ndarray],
                               provenance: Dict[str, Any]) -> None:
  """Writes pseudo_labels.npz + provenance.json as one directory, atomically.

  Both files are written into `<output_dir>.partial`, which is then renamed to
  output_dir: a crash at any point (here: an array or a provenance value that
  cannot be written) leaves no output_dir. A `.partial` left by a killed
  process is removed by the next call.
  """
  with files.staged_directory(output_dir) as partial:
    np.savez(os.path.join(partial, PSEUDO_LABELS_FILE), **arrays)
    with open(os.path.join(partial, PROVENANCE_FILE), 'w', encoding='utf-8') as f:
      json.dump(provenance, f, indent=2, sort_keys=True)


def load_pseudo_label_dataset(directory: str) -> Dict[str, np.ndarray]:
  """The arrays of a pseudo-label dataset (`write_pseudo_label_dataset`)."""
  with np.load(os.path.join(directory, PSEUDO_LABELS_FILE)) as data:
    return {key: data[key] for key in data.files}
