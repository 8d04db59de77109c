"""Labeled slices mixed with pseudo-labeled ones: one random-access training source.

A student (mdiqa_jax.semi) trains on the labeled training split plus the
unlabeled slices its teachers pseudo-labeled. `mdiqa_jax.semi` writes the
chosen slices, their targets and loss weights to a selection file (.npz, see
`write_selection`); setting `config.data.pseudo_labels` to that file makes
`pipeline.create_train_iterator` read this mixture instead of the labeled split
alone. Images of pseudo-labeled slices are read from the unlabeled split (never
its hidden labels).

Example i < L (L labeled slices) is labeled slice i; example L + j is the j-th
selected unlabeled slice. Every example is a dict with the same keys, so any
batch mixes both kinds:
  'image'         (H, W, 1) as stored (float32 in [0, 1], or uint8: preprocess.as_slice);
  'score'         float32: the label, or the teachers' mean score;
  'weight'        float32: 1 for labeled slices, the pseudo-label weight;
  'is_pseudo'     bool;
  'target_probs'  (K, num_bins) float32, only with soft targets: the teachers'
                  mean distributions, and for labeled slices the Gaussian
                  targets of their label (the loss uses target_probs for
                  every example of a batch when the key is present).
"""
from typing import Any, Dict, Optional

import numpy as np

from mdiqa_jax import files

# Keys of a selection file; 'target_probs' and 'labeled_target_probs' come together.
_REQUIRED = ('index', 'score', 'weight')
_SOFT = ('target_probs', 'labeled_target_probs')


def write_selection(path: str, selection: Dict[str, np.ndarray],
                    labeled_target_probs: Optional[np.ndarray] = None) -> None:
  """Writes a selection file atomically (temporary file, then os.replace).

  Args:
    path: the .npz file to write.
    selection: from `pseudo_labels.select_for_student`: 'index' (n,) positions
      in the unlabeled split, 'score' (n,), 'weight' (n,), optionally
      'target_probs' (n, K, bins) and other (n,) arrays kept for reports.
    labeled_target_probs: (L, K, bins) Gaussian targets of the labeled slices'
      labels, required with 'target_probs'.
  """
  arrays = dict(selection)
  if ('target_probs' in arrays) != (labeled_target_probs is not None):
    raise ValueError('Soft pseudo-labels need labeled_target_probs and vice versa.')
  if labeled_target_probs is not None:
    arrays['labeled_target_probs'] = labeled_target_probs
  with files.atomic_path(path) as temporary:
    np.savez(temporary, **arrays)


def load_selection(path: str) -> Dict[str, np.ndarray]:
  """Reads and checks a selection file (config.data.pseudo_labels)."""
  try:
    with np.load(path) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f'config.data.pseudo_labels={path!r}: cannot read the '
                            f'selection file ({e}).') from e
  missing = [key for key in _REQUIRED if key not in arrays]
  soft = [key in arrays for key in _SOFT]
  if missing or any(soft) != all(soft):
    raise ValueError(f'{path}: a selection file needs {_REQUIRED} (and both or none of '
                     f'{_SOFT}); it has {sorted(arrays)}.')
  num_selected = arrays['index'].shape[0]
  for key in ('score', 'weight', 'target_probs'):
    if key in arrays and arrays[key].shape[0] != num_selected:
      raise ValueError(f'{path}: {key!r} has {arrays[key].shape[0]} rows, index has '
                       f'{num_selected}.')
  return arrays


class PseudoLabeledMixture:
  """Random-access source over labeled + pseudo-labeled slices (module docstring).

  Args:
    labeled: random-access source of the labeled training split.
    unlabeled: random-access source of the unlabeled split.
    selection: `load_selection` output.
  """

  def __init__(self, labeled: Any, unlabeled: Any, selection: Dict[str, np.ndarray]):
    self._labeled = labeled
    self._unlabeled = unlabeled
    self._index = np.asarray(selection['index'], np.int64)
    self._score = np.asarray(selection['score'], np.float32)
    self._weight = np.asarray(selection['weight'], np.float32)
    self._target_probs = selection.get('target_probs')
    self._labeled_target_probs = selection.get('labeled_target_probs')
    if self._index.size and not 0 <= self._index.min() <= self._index.max() < len(unlabeled):
      raise ValueError(f'Selection indices must lie in [0, {len(unlabeled)}) (the unlabeled '
                       f'split), got [{self._index.min()}, {self._index.max()}].')
    if (self._labeled_target_probs is not None and
        len(self._labeled_target_probs) != len(labeled)):
      raise ValueError(f'labeled_target_probs has {len(self._labeled_target_probs)} rows but '
                       f'the labeled split has {len(labeled)} examples; rewrite the selection '
                       'for this config.data.train_split.')

  @property
  def num_labeled(self) -> int:
    return len(self._labeled)

  def __len__(self) -> int:
    return len(self._labeled) + self._index.size

  def __getitem__(self, position: int) -> Dict[str, np.ndarray]:
    position = int(position)
    if not 0 <= position < len(self):
      raise IndexError(f'Mixture index {position} not in [0, {len(self)}).')
    num_labeled = len(self._labeled)
    if position < num_labeled:
      example = self._labeled[position]
      features = {'image': np.asarray(example['image']),
                  'score': np.float32(example['score']), 'weight': np.float32(1.0),
                  'is_pseudo': np.bool_(False)}
      if self._labeled_target_probs is not None:
        features['target_probs'] = self._labeled_target_probs[position]
      return features
    row = position - num_labeled
    example = self._unlabeled[int(self._index[row])]
    features = {'image': np.asarray(example['image']),
                'score': self._score[row], 'weight': self._weight[row],
                'is_pseudo': np.bool_(True)}
    if self._target_probs is not None:
      features['target_probs'] = self._target_probs[row]
    return features
