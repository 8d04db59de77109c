r"""Evaluation: predictions over a split, challenge metrics, report files.

  python -m mdiqa_jax.evaluate --workdir=DIR [--split=test]

loads the best checkpoint of a training workdir (or a step directory given as
--checkpoint), scores every slice of the split whole, at native resolution,
exactly as `mdiqa-predict` scores a file (`slice_scoring`: every tile of the
slice, patches pooled by their weights and body fraction), and writes to
<workdir>/eval_<split>/ (or --output_dir):
  metrics.json      PLCC, SROCC, KROCC, overall, number of slices, checkpoint
  predictions.csv   index, label, score, uncertainty, per-scale scores
  scatter.png       prediction vs label, uncertainty as error bars, metrics in
                    the title
The three files are one set: all are written to temporary files first and
then renamed into place together, with SIGTERM / SIGINT held back meanwhile,
so a full disk, a signal or a crash leaves the previous report whole, never
files from two evaluations. A best step that does not restore is reported
and the next one is evaluated (`checkpointing.load_inference_checkpoint`);
metrics.json names the step used. Errors a user can fix (no such workdir,
split or checkpoint) end in one line on stderr and status 1.
The training job calls the same functions at the end of training.
"""
import contextlib
import csv
import functools
import io
import json
import math
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import tqdm

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import files
from mdiqa_jax import metrics as metrics_lib
from mdiqa_jax import models
from mdiqa_jax import slice_scoring
from mdiqa_jax.data import pipeline

Predictions = Dict[str, np.ndarray]


def predict_split(config: ml_collections.ConfigDict, params: Any, split: str, *,
                  predict_fn: Optional[slice_scoring.TilePredictFn] = None,
                  show_progress: bool = False) -> Predictions:
  """Scores every slice of `split` whole (all hosts take part).

  Each host scores its shard on its local devices (tile batches sharded over
  them); the shards are then gathered, so every host returns the whole split.
  Args:
    config: the run config (data, model, eval_batch_size = tiles per call).
    params: model parameters (host or device arrays).
    split: TFDS split name (slicing allowed).
    predict_fn: from slice_scoring.make_tile_predict_fn (built from config when None).
    show_progress: tqdm bar with ETA on process 0.
  Returns:
    numpy arrays ordered by 'index' (position in the split): 'index' (N,)
    int32, 'label' (N,), 'score' (N,), 'uncertainty' (N,), 'scale_scores'
    (N, K) and, for distribution heads, 'log_probs' (N, K, bins).
  """
  process_count = jax.process_count()
  local_devices = jax.local_devices()
  tile_batch = int(config.eval_batch_size)
  if tile_batch % len(local_devices):
    raise ValueError(
        f'config.eval_batch_size={tile_batch} (tiles per call) must be a multiple of the '
        f'number of local devices ({len(local_devices)}).')
  if predict_fn is None:
    predict_fn = slice_scoring.make_tile_predict_fn(models.create_model(config))
  preprocessing = slice_scoring.Preprocessing.from_config(config)
  mesh = Mesh(np.asarray(local_devices), ('batch',))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  tile_sharding = NamedSharding(mesh, PartitionSpec('batch'))

  num_examples = pipeline.num_examples(config.data, split)
  per_host = math.ceil(num_examples / process_count)
  labels: Dict[int, float] = {}

  def slices():
    for index, example in pipeline.host_examples(config.data, split):
      labels[index] = float(example['score'])
      yield index, example['image'], pipeline.example_pixel_mm(example, config.data)

  scored = slice_scoring.score_slices(
      predict_fn, params, slices(), preprocessing, tile_batch=tile_batch,
      put=lambda tiles: jax.device_put(tiles, tile_sharding), multiple_of=len(local_devices))
  rows = []
  for index, prediction in tqdm.tqdm(scored, total=per_host, desc=f'score {split}',
                                     unit='slice',
                                     disable=not show_progress or jax.process_index() != 0):
    rows.append(_prediction_row(index, labels.pop(index), prediction))
  gathered = _stack_rows(rows, per_host)
  if process_count > 1:
    gathered = {key: np.concatenate(list(value)) for key, value in
                multihost_utils.process_allgather(gathered).items()}
  valid = gathered.pop('valid').astype(bool)
  order = np.argsort(gathered['index'][valid], kind='stable')
  predictions = {key: value[valid][order] for key, value in gathered.items()}
  if predictions['index'].size != num_examples:
    raise RuntimeError(f'Predicted {predictions["index"].size} examples of split {split!r}, '
                       f'expected {num_examples}.')
  return predictions


def _prediction_row(index: int, label: float, prediction: Dict[str, Any]) -> Dict[str, Any]:
  row = {'index': np.int32(index), 'label': np.float32(label), 'valid': np.bool_(True),
         'score': np.float32(prediction['score']),
         'uncertainty': np.float32(prediction['uncertainty']),
         'scale_scores': prediction['scale_scores']}
  if 'log_probs' in prediction:
    row['log_probs'] = prediction['log_probs']
  return row


def _stack_rows(rows, size: int) -> Predictions:
  """Rows -> arrays of `size` rows (padding rows have valid False), so that
  every host contributes arrays of one shape to the gather."""
  if not rows:
    raise RuntimeError('This host has no examples to score; use fewer hosts than examples.')
  stacked = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
  padding = size - len(rows)
  return {key: np.concatenate([value, np.zeros((padding,) + value.shape[1:], value.dtype)])
          for key, value in stacked.items()}


def compute_metrics(predictions: Predictions) -> Dict[str, float]:
  """PLCC / SROCC / KROCC / overall of predicted score vs label."""
  return metrics_lib.all_metrics(predictions['score'], predictions['label'])


REPORT_FILES = ('metrics.json', 'predictions.csv', 'scatter.png')


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
  """Holds SIGTERM and SIGINT back for the block, then delivers them.

  Python runs signal handlers in the main thread whichever thread the kernel
  picked, so swapping the handlers (not the thread's signal mask) is what
  defers them in a process with JAX's threads.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
              for number in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
    for number in received:
      if callable(previous[number]):
        previous[number](number, None)
      elif previous[number] == signal.SIG_DFL:
        signal.raise_signal(number)


def _write_set(output_dir: str, writers: Dict[str, Callable[[str], None]]) -> None:
  """Writes {name: write(path)} into output_dir as one set (module docstring)."""
  with _signals_held(), contextlib.ExitStack() as stack:
    for name, write in writers.items():
      write(stack.enter_context(files.atomic_path(os.path.join(output_dir, name))))
    # Leaving the stack renames every temporary onto its file.


def write_report(predictions: Predictions, metrics: Dict[str, float], output_dir: str, *,
                 split: str, checkpoint: str) -> None:
  """Writes metrics.json, predictions.csv and scatter.png into output_dir, as one set."""
  summary = dict(metrics, split=split, num_examples=int(predictions['index'].size),
                 checkpoint=checkpoint)

  num_scales = predictions['scale_scores'].shape[1]
  table = io.StringIO()
  writer = csv.writer(table)
  writer.writerow(['index', 'label', 'score', 'uncertainty'] +
                  [f'scale_score_{k}' for k in range(num_scales)])
  for i in range(predictions['index'].size):
    # 9 significant digits round-trip float32 exactly, so metrics recomputed
    # from the CSV equal metrics.json even for nearly constant predictions.
    writer.writerow([int(predictions['index'][i])] +
                    [f'{predictions[key][i]:.9g}' for key in ('label', 'score',
                                                               'uncertainty')] +
                    [f'{value:.9g}' for value in predictions['scale_scores'][i]])

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(5.5, 5.5))
  axis.errorbar(predictions['label'], predictions['score'], yerr=predictions['uncertainty'],
                fmt='o', markersize=3, alpha=0.6, elinewidth=0.6)
  axis.plot([0, 4], [0, 4], 'k--', linewidth=0.8)
  axis.set(xlim=(-0.2, 4.2), ylim=(-0.2, 4.2), xlabel='label (mean radiologist score)',
           ylabel='predicted score (± uncertainty)')
  axis.set_title(f'{split} (n={predictions["index"].size}): PLCC {metrics["plcc"]:.4f}  '
                 f'SROCC {metrics["srocc"]:.4f}\nKROCC {metrics["krocc"]:.4f}  '
                 f'overall {metrics["overall"]:.4f}', fontsize=10)
  axis.grid(alpha=0.3)
  figure.tight_layout()

  def write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
      with open(path, 'w', encoding='utf-8', newline='') as f:
        f.write(text)
    return write

  try:
    _write_set(output_dir, dict(zip(REPORT_FILES, (
        write_text(json.dumps(summary, indent=2, sort_keys=True) + '\n'),
        write_text(table.getvalue()),
        lambda path: figure.savefig(path, dpi=120)))))
  finally:
    plt.close(figure)


def format_metrics(metrics: Dict[str, float]) -> str:
  return '  '.join(f'{name.upper()} {metrics[name]:.4f}'
                   for name in ('plcc', 'srocc', 'krocc', 'overall'))


def evaluate_checkpoint(path: str, split: str, *,
                        output_dir: Optional[str] = None, show_progress: bool = True,
                        predict_fn: Optional[slice_scoring.TilePredictFn] = None) -> Dict[str, float]:
  """Evaluates a workdir's best checkpoint (or a step directory) on `split`.

  Writes the report (process 0) into output_dir (default
  <workdir>/eval_<split>) and returns the metrics. `predict_fn` (from
  slice_scoring.make_tile_predict_fn of the same model) saves a compilation when the caller has one.
  Raises:
    config_validation.ConfigError: the run's dataset has no such split.
    checkpointing.CheckpointError: no step restores (or the named one does not).
    FileNotFoundError: `path` is no training workdir or step directory.
  """
  loaded = checkpointing.load_inference_checkpoint(path)
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
    write_report(predictions, metrics, output_dir, split=split, checkpoint=loaded.step_dir)
    logging.info('Wrote %s/{%s}', output_dir, ','.join(REPORT_FILES))
  return metrics


def _define_flags() -> Dict[str, Any]:
  """Defines the command's flags (only when run as a command, so importing this
  module from train / predict, which define flags of the same names, is safe)."""
  return {
      'workdir': flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.'),
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'A step directory <workdir>/checkpoints/<step> to evaluate '
          "instead of the workdir's best checkpoint."),
      'split': flags.DEFINE_string('split', 'test', 'Split to evaluate (TFDS slicing allowed).'),
      'output_dir': flags.DEFINE_string(
          'output_dir', None, 'Report directory (default <workdir>/eval_<split>).'),
  }


def main(argv, command_flags: Dict[str, Any]):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_library_logging()
  values = {name: holder.value for name, holder in command_flags.items()}
  path = values['checkpoint'] or values['workdir']
  if not path:
    raise app.UsageError('Give --workdir=DIR (or --checkpoint=DIR/checkpoints/STEP).')
  metrics = evaluate_checkpoint(path, values['split'],
                                output_dir=values['output_dir'])
  print(f'{values["split"]}: {format_metrics(metrics)}')


def run():
  """Console entry point `mdiqa-evaluate`."""
  command_errors.run(functools.partial(main, command_flags=_define_flags()), 'mdiqa-evaluate')


if __name__ == '__main__':
  run()
