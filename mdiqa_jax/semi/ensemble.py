"""Stage 2: every teacher scores the unlabeled split; the ensemble becomes pseudo-labels.

Scoring is evaluation's (`inference.split.predict_split`: whole slices at
native resolution). The dataset holds the ensemble's mean score, spread,
total std and mean distributions with every teacher's predictions, and its
provenance (teacher checkpoints, configs, pseudo-label quality against the
split's hidden labels).
"""
import os
import time
from typing import Any, Dict, Optional, Sequence

import ml_collections
import numpy as np

from mdiqa_jax import config_base
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax.inference import checkpoint as checkpoint_lib
from mdiqa_jax.inference.split import predict_split
from mdiqa_jax.semi import pseudo_labels
from mdiqa_jax.semi.records import (PROVENANCE_FILE, log_event, write_pseudo_label_dataset)


def predict_with_distributions(config: ml_collections.ConfigDict, params: Any,
                               split: str) -> Dict[str, np.ndarray]:
  """Scores every slice of `split` whole, as evaluation does (`evaluate.predict_split`).

  Returns numpy arrays ordered by position in the split: 'index' (N,),
  'label' (N,) (the split's stored score), 'score' (N,), 'uncertainty' (N,)
  and, for distribution heads, 'log_probs' (N, K, num_bins): the slice-level
  distributions of the K heads.
  """
  predictions = predict_split(config, params, split)
  return {key: predictions[key] for key in ('index', 'label', 'score', 'uncertainty',
                                            'log_probs') if key in predictions}


def pseudo_label_arrays(teacher_predictions: Sequence[Dict[str, np.ndarray]]
                        ) -> Dict[str, np.ndarray]:
  """Stacks M teachers' predictions and adds the ensemble statistics.

  Returns 'index' (N,), 'teacher_scores' / 'teacher_uncertainty' (M, N),
  'score' (ensemble mean), 'spread' (ensemble std), 'total_std' (N,),
  'hidden_label' (N,) (the split's stored labels: for measuring pseudo-label
  quality only, never read by training), and with distribution heads
  'teacher_log_probs' (M, N, K, bins) and 'target_probs' (N, K, bins).
  """
  index = teacher_predictions[0]['index']
  for prediction in teacher_predictions[1:]:
    if not np.array_equal(prediction['index'], index):
      raise ValueError('Teachers predicted different examples of the unlabeled split.')
  scores = np.stack([p['score'] for p in teacher_predictions])
  uncertainty = np.stack([p['uncertainty'] for p in teacher_predictions])
  arrays = {
      'index': index.astype(np.int64),
      'teacher_scores': scores,
      'teacher_uncertainty': uncertainty,
      'score': pseudo_labels.ensemble_mean_score(scores),
      'spread': pseudo_labels.ensemble_spread(scores),
      'total_std': pseudo_labels.total_std(scores, uncertainty),
      'hidden_label': teacher_predictions[0]['label'],
  }
  if all('log_probs' in p for p in teacher_predictions):
    arrays['teacher_log_probs'] = np.stack([p['log_probs'] for p in teacher_predictions])
    arrays['target_probs'] = pseudo_labels.mean_distribution(arrays['teacher_log_probs'])
  return arrays


def make_pseudo_labels(teacher_dirs: Sequence[str], output_dir: str, *, workdir: str,
                       provenance_extra: Optional[Dict[str, Any]] = None) -> None:
  """Stage 2: every teacher predicts the unlabeled split; writes the dataset."""
  if os.path.exists(os.path.join(output_dir, PROVENANCE_FILE)):
    log_event(workdir, 'pseudo_labels', 'skip', path=output_dir)
    return
  log_event(workdir, 'pseudo_labels', 'start', path=output_dir)
  start = time.time()
  predictions, teachers = [], []
  for teacher_dir in teacher_dirs:
    loaded = checkpoint_lib.load_inference_checkpoint(teacher_dir)
    config = loaded.config
    split = config.data.unlabeled_split
    predictions.append(predict_with_distributions(config, loaded.params, split))
    teachers.append({
        'checkpoint': loaded.step_dir,
        'config': config_base.config_json(config),
        'unlabeled_metrics': metrics_lib.all_metrics(predictions[-1]['score'],
                                                     predictions[-1]['label']),
    })
  arrays = pseudo_label_arrays(predictions)
  provenance = dict(provenance_extra or {})
  provenance.update(
      dataset=config.data.name, split=split, num_examples=int(arrays['index'].size),
      teachers=teachers, created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      ensemble_metrics_vs_hidden_labels=metrics_lib.all_metrics(arrays['score'],
                                                                arrays['hidden_label']),
      mae_vs_hidden_labels=float(np.mean(np.abs(arrays['score'] - arrays['hidden_label']))))
  write_pseudo_label_dataset(output_dir, arrays, provenance)
  log_event(workdir, 'pseudo_labels', 'done', path=output_dir,
            wall_seconds=time.time() - start)
