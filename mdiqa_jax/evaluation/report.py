"""The evaluation report: metrics.json, predictions.csv and scatter.png, as one set.

The three files are written to temporary files first and then renamed into
place together, with SIGTERM / SIGINT held back meanwhile, so a full disk, a
signal or a crash leaves the previous report whole, never files from two
evaluations.
  metrics.json      PLCC, SROCC, KROCC, overall, number of slices, checkpoint
  predictions.csv   index, label, score, uncertainty, per-scale scores
  scatter.png       prediction vs label, uncertainty as error bars, metrics in
                    the title
"""
import contextlib
import csv
import io
import json
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from mdiqa_jax import files

Predictions = Dict[str, np.ndarray]


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


def score_scatter(labels: np.ndarray, scores: np.ndarray, title: str, *,
                  uncertainty: Optional[np.ndarray] = None, size: float = 5.5,
                  title_size: float = 10) -> Any:
  """A matplotlib figure of predicted score vs label (N,), score units 0..4,
  with the identity line; `uncertainty` (N,) as error bars when given."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(size, size))
  if uncertainty is None:
    axis.scatter(labels, scores, s=8, alpha=0.6)
  else:
    axis.errorbar(labels, scores, yerr=uncertainty, fmt='o', markersize=3, alpha=0.6,
                  elinewidth=0.6)
  axis.plot([0, 4], [0, 4], 'k--', linewidth=0.8)
  axis.set(xlim=(-0.2, 4.2), ylim=(-0.2, 4.2), xlabel='label (mean radiologist score)',
           ylabel='predicted score' + ('' if uncertainty is None else ' (± uncertainty)'))
  axis.set_title(title, fontsize=title_size)
  axis.grid(alpha=0.3)
  figure.tight_layout()
  return figure


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

  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure = score_scatter(
      predictions['label'], predictions['score'],
      f'{split} (n={predictions["index"].size}): PLCC {metrics["plcc"]:.4f}  '
      f'SROCC {metrics["srocc"]:.4f}\nKROCC {metrics["krocc"]:.4f}  '
      f'overall {metrics["overall"]:.4f}', uncertainty=predictions['uncertainty'])

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
