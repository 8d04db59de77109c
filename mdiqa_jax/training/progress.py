"""Train metrics: fetched lazily (steps stay pipelined), checked finite, logged."""
import os
from typing import Any, Dict, List

from absl import logging
import jax
import numpy as np
import tensorboardX

from mdiqa_jax import command_errors
from mdiqa_jax import train_step as train_step_lib



class NonFiniteLossError(command_errors.UserError, FloatingPointError):
  """Training produced a NaN/inf loss, gradient or parameter norm."""


class SummaryWriter:
  """TensorBoard scalars under <workdir>/tensorboard, written by process 0 only.

  tensorboardX writes the event files without TensorFlow (clu's writers need
  TensorFlow, which the project does not install).
  """

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write_scalars(self, step: int, scalars: Dict[str, float]) -> None:
    if self._writer is not None:
      for tag, value in scalars.items():
        self._writer.add_scalar(tag, value, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def host_means(history: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
  return {key: float(np.mean([h[key] for h in history])) for key in history[0]}


class MetricsBuffer:
  """Train metrics of recent steps, fetched lazily so steps stay pipelined."""

  def __init__(self, parallel: train_step_lib.DataParallel):
    self._parallel = parallel
    self._on_device: List[Any] = []
    self._steps: List[int] = []
    self._on_host: List[Dict[str, np.ndarray]] = []

  def add(self, step: int, metrics: Any) -> None:
    self._steps.append(step)
    self._on_device.append(metrics)

  def check_finite(self) -> None:
    """Fetches pending metrics; raises NonFiniteLossError on NaN/inf."""
    for step, metrics in zip(self._steps, self._on_device):
      values = self._parallel.fetch(metrics)
      bad = {k: float(v) for k, v in values.items() if not np.isfinite(v)}
      if bad:
        raise NonFiniteLossError(f'Non-finite training metrics at step {step}: {bad}.')
      self._on_host.append(values)
    self._on_device, self._steps = [], []

  def pop_means(self) -> Dict[str, float]:
    means = host_means(self._on_host)
    self._on_host = []
    return means


def log_train_metrics(writer: 'SummaryWriter', means: Dict[str, float], step: int,
                       total_steps: int, *, steps: int, images: int, seconds: float) -> None:
  """Writes a window's mean train metrics and throughput; logs a line with ETA."""
  means['steps_per_second'] = steps / seconds
  means['images_per_second'] = images / seconds
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  logging.info('step %d/%d  loss %.4f  mae %.3f  lr %.2e  %.1f img/s  ETA %s', step,
               total_steps, means['loss'], means['mae'], means['learning_rate'],
               means['images_per_second'],
               format_seconds((total_steps - step) / means['steps_per_second']))


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'
