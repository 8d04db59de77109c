"""Evaluating a trained model on a dataset split: metrics and the report.

`evaluate_checkpoint(path, split)` loads the best intact step of a workdir (or
a named step directory, `inference.checkpoint`), scores every slice of the
split whole (`inference.split.predict_split`, exactly as mdiqa-predict scores
a file) and writes the report (`report.write_report`) into
<workdir>/eval_<split>/. The training job calls the same functions.
"""
import os
from typing import Dict, Optional

from absl import logging
import jax

from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax.data import pipeline
from mdiqa_jax.evaluation import report
from mdiqa_jax.inference import checkpoint as checkpoint_lib
from mdiqa_jax.inference.predict_fn import PredictFn
from mdiqa_jax.inference.split import Predictions, predict_split


def compute_metrics(predictions: Predictions) -> Dict[str, float]:
  """PLCC / SROCC / KROCC / overall of predicted score vs label."""
  return metrics_lib.all_metrics(predictions['score'], predictions['label'])


def evaluate_checkpoint(path: str, split: str, *,
                        output_dir: Optional[str] = None, show_progress: bool = True,
                        predict_fn: Optional[PredictFn] = None) -> Dict[str, float]:
  """Evaluates a workdir's best checkpoint (or a step directory) on `split`.

  Writes the report (process 0) into output_dir (default
  <workdir>/eval_<split>) and returns the metrics. `predict_fn` (from
  `scoring.make_tile_predict_fn` of the same model) saves a compilation when
  the caller has one.
  Raises:
    config_validation.ConfigError: the run's dataset has no such split.
    checkpoint_lib.CheckpointError: no step restores (or the named one does not).
    FileNotFoundError: `path` is no training workdir or step directory.
  """
  loaded = checkpoint_lib.load_inference_checkpoint(path)
  try:
    pipeline.num_examples(loaded.config.data, split)
  except (KeyError, ValueError) as e:
    raise config_validation.ConfigError(
        f'split {split!r}: not a split of {loaded.config.data.name} '
        f'({command_errors.one_line(e)})') from e
  predictions = predict_split(loaded.config, loaded.params, split, predict_fn=predict_fn,
                              show_progress=show_progress)
  metrics = compute_metrics(predictions)
  if jax.process_index() == 0:
    output_dir = output_dir or os.path.join(loaded.workdir, f'eval_{split.replace(":", "_")}')
    report.write_report(predictions, metrics, output_dir, split=split, checkpoint=loaded.step_dir)
    logging.info('Wrote %s/{%s}', output_dir, ','.join(report.REPORT_FILES))
  return metrics
