"""Stage 3: the student's selection of pseudo-labeled slices and its training config."""
import os
from typing import Any, Dict

import ml_collections
import numpy as np

from mdiqa_jax import losses
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax.data import mixture
from mdiqa_jax.data import pipeline
from mdiqa_jax.models import bins
from mdiqa_jax.semi import pseudo_labels
from mdiqa_jax.semi.records import load_pseudo_label_dataset


def labeled_gaussian_targets(config: ml_collections.ConfigDict) -> np.ndarray:
  """(L, K, num_bins) Gaussian targets of the labeled split's labels (config.loss.kwargs.sigmas)."""
  source = pipeline.open_source(config.data, config.data.train_split)
  scores = np.asarray([source[i]['score'] for i in range(len(source))], np.float32)
  head = config.model.head
  centers = bins.bin_centers(head.score_min, head.score_max, head.bin_width)
  return np.stack([np.asarray(losses.gaussian_targets(scores, sigma, centers))
                   for sigma in config.loss.kwargs.sigmas], axis=1)


def write_student_selection(config: ml_collections.ConfigDict, pseudo_dir: str,
                            path: str) -> Dict[str, Any]:
  """Applies config.semi's strategy to a pseudo-label dataset; writes the selection.

  Returns a summary: strategy, number kept, and the kept pseudo-labels'
  metrics against the hidden labels.
  """
  semi = config.semi
  data = load_pseudo_label_dataset(pseudo_dir)
  threshold = semi.confidence_threshold if semi.confidence_threshold >= 0 else None
  selection = pseudo_labels.select_for_student(
      data['teacher_scores'], data['teacher_uncertainty'], data.get('teacher_log_probs'),
      strategy=semi.strategy, weight=semi.pseudo_weight,
      confidence_measure=semi.confidence_measure,
      fraction=None if threshold is not None else semi.confidence_fraction,
      threshold=threshold)
  # Positions in the pseudo-label arrays -> positions in the unlabeled split.
  selection['index'] = data['index'][selection['index']]
  labeled_targets = (labeled_gaussian_targets(config) if 'target_probs' in selection
                     else None)
  mixture.write_selection(path, selection, labeled_targets)
  kept_labels = data['hidden_label'][np.searchsorted(data['index'], selection['index'])]
  summary = {'strategy': semi.strategy, 'num_pseudo_labeled': int(data['index'].size),
             'num_kept': int(selection['index'].size),
             'kept_mae_vs_hidden_labels': float(np.mean(np.abs(selection['score'] -
                                                                kept_labels)))
             if selection['index'].size else None}
  if selection['index'].size > 2:
    summary['kept_metrics_vs_hidden_labels'] = metrics_lib.all_metrics(selection['score'],
                                                                       kept_labels)
  return summary


def student_config(config: ml_collections.ConfigDict, selection_path: str,
                   student_index: int) -> ml_collections.ConfigDict:
  """The student's training config: config + the mixture, seed config.seed + j."""
  student = ml_collections.ConfigDict(config.to_dict())
  with student.unlocked():
    student.data.pseudo_labels = os.path.abspath(selection_path)
  student.seed = int(config.seed) + student_index
  return student
