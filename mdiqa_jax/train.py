r"""Training job: build the data, train, checkpoint, evaluate on the test split.

  python -m mdiqa_jax.train --config=configs/default.py --workdir=/tmp/mdiqa \
      [--config.num_epochs=10 --config.optim.learning_rate=3e-4 ...]

The default job builds the TFDS dataset if it is absent, trains for
config.num_epochs (or config.num_train_steps when > 0), evaluates on
config.data.eval_split every config.eval_every_steps steps, keeps checkpoints
in <workdir>/checkpoints (last N + best-k by validation SROCC), and finally
evaluates the best checkpoint on config.data.test_split, printing PLCC /
SROCC / KROCC / overall and writing <workdir>/eval_<split>/. Rerunning the
same command resumes from the last checkpoint (parameters, optimiser, step,
RNG and data iterator position). SIGTERM (preemption) saves a checkpoint and
exits with status 0; a NaN/inf loss stops the run with an error, keeping the
last good checkpoint: a step is saved only after the loss, gradient norm and
parameter norm of every step since the previous save were found finite
(metrics are fetched from the devices at log, eval and save steps only, so
steps in between stay pipelined).

Before anything is written the config is validated whole
(`config_validation`: every field, the model it builds, the splits it
names), and the job takes the workdir's lock: a second training on the same
workdir stops at once, naming the first (`checkpointing.workdir_lock`). A
saved step that does not restore is reported, set aside, and the previous
one is resumed from (`checkpointing.restore_newest_intact`). SIGTERM at any
phase exits with status 0 and leaves nothing half-written: in the train loop
it saves first; while building the data, restoring or evaluating the test
split it stops at once (reports are written atomically), and the rerun does
what remains. Errors a user can fix end in one line on stderr and status 1
(`command_errors`; MDIQA_TRACEBACK=1 keeps the traceback).

Multi-host: set --config.distributed=True; `jax.distributed.initialize()`
then finds the cluster by itself on Cloud TPU, SLURM and Open MPI, or from
--coordinator_address / --num_processes / --process_id.
"""
import functools
import os
import time
from typing import Any, Callable, Dict, List

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorboardX
import tensorflow_datasets as tfds

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import convert
from mdiqa_jax import evaluate
from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import slice_scoring
from mdiqa_jax import train_step as train_step_lib
from mdiqa_jax.data import pipeline


class NonFiniteLossError(command_errors.UserError, FloatingPointError):
  """Training produced a NaN/inf loss, gradient or parameter norm."""


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """config.num_train_steps when > 0, else num_epochs full passes (rounded)."""
  num_train_steps = int(config.num_train_steps)
  if num_train_steps > 0:
    return num_train_steps
  process_count = jax.process_count()
  # The input pipeline drops the remainder of each host's shard every epoch.
  steps_per_epoch = (num_train_examples // process_count) // (config.batch_size //
                                                              process_count)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def load_pretrained_backbones(config: ml_collections.ConfigDict, params: Any) -> Any:
  """Replaces the ViT / ConvNeXt params by config.model.<family>.init_from files."""
  params = dict(params)
  for family in convert.FAMILIES:
    path = config.model[family].init_from
    if not path:
      continue
    if family not in params:
      raise ValueError(f'config.model.{family}.init_from={path!r} but the model has no '
                       f'{family} branch (config.model.use_vit / use_cnn).')
    params[family], report = convert.load_pretrained(params[family], path, family,
                                                     image_size=config.data.image_size)
    logging.info('Pretrained %s from %s:\n%s', family, path, report.summary())
  return params


def prepare_and_validate_data(config: ml_collections.ConfigDict) -> None:
  """Builds the dataset if absent (process 0) and checks the splits the run names.

  Raises:
    config_validation.ConfigError: for an unknown dataset or split, or a
      training split smaller than one batch.
  """
  if jax.process_index() == 0:
    try:
      pipeline.prepare_dataset(config.data)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise config_validation.ConfigError(
          f'config.data.name={config.data.name!r}: '
          f'{command_errors.one_line(e).split(" Available")[0]}') from e
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mdiqa_jax: dataset prepared')
  config_validation.validate_splits(
      config, functools.partial(pipeline.num_examples, config.data))


def _split_exists(data_config: ml_collections.ConfigDict, split: str) -> bool:
  try:
    return pipeline.num_examples(data_config, split) > 0
  except (KeyError, ValueError):
    return False


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


def _host_means(history: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
  return {key: float(np.mean([h[key] for h in history])) for key in history[0]}


class _MetricsBuffer:
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
    means = _host_means(self._on_host)
    self._on_host = []
    return means


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from workdir if possible), then evaluates on the test split.

  Raises:
    config_validation.ConfigError: before anything is written, for any bad
      config field or split.
    checkpointing.WorkdirLockedError: another training holds the workdir.
    NonFiniteLossError: a NaN/inf loss (the last good checkpoint is kept).
  Returns:
    {'step': steps done, 'preempted': bool, 'validation': last validation
    metrics or None, 'test': test metrics or None}.
  """
  workdir = checkpointing.absolute_path(workdir)
  config_validation.validate_config(config)
  result = {'step': 0, 'preempted': False, 'validation': None, 'test': None}
  with checkpointing.PreemptionWatcher() as watcher:
    try:
      prepare_and_validate_data(config)
      with checkpointing.workdir_lock(workdir):
        _train_and_evaluate(config, workdir, watcher, result)
    except checkpointing.Preemption:
      logging.warning('SIGTERM: stopped at step %d before the job ended; everything it wrote '
                      'is complete. Rerun the same command to continue.', result['step'])
      result['preempted'] = True
  return result


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        watcher: checkpointing.PreemptionWatcher,
                        result: Dict[str, Any]) -> None:
  """The job of `train_and_evaluate` once the data and the lock are there; fills `result`."""
  process_index, process_count = jax.process_index(), jax.process_count()
  num_train_examples = pipeline.num_examples(config.data, config.data.train_split)
  total_steps = total_train_steps(config, num_train_examples)

  model = models.create_model(config)
  loss_fn = losses.make_loss_fn(config)
  params_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = jax.jit(train_step_lib.init_params, static_argnums=(0, 2))(
      model, params_rng, config.data.image_size)
  params = load_pretrained_backbones(config, params)
  logging.info('Model: %s parameters.', f'{models.count_params(params):,}')
  tx, learning_rate_fn = optim.create_optimizer(config.optim, models.param_groups(params),
                                                total_steps)
  make_state = functools.partial(train_step_lib.create_train_state, params, tx, state_rng,
                                 bool(config.optim.ema_decay))
  parallel = train_step_lib.DataParallel(
      train_step_lib.make_train_step(config, model, loss_fn, tx, learning_rate_fn),
      config.parallel)
  make_iterator = functools.partial(
      pipeline.create_train_iterator, config.data,
      batch_size_per_host=config.batch_size // process_count, seed=config.seed,
      process_index=process_index, process_count=process_count)
  train_iterator = make_iterator()
  manager = checkpointing.create_manager(
      workdir, keep_last=config.keep_checkpoints, keep_best=config.keep_best,
      async_save=bool(config.async_checkpointing))

  had_steps = bool(manager.all_steps())
  start_step, state = checkpointing.restore_newest_intact(
      manager, workdir, train_step_lib.abstract_state(make_state, parallel.replicated_sharding),
      train_iterator)
  if start_step:
    logging.info('Resumed from %s at step %d.', workdir, start_step)
  else:
    state = make_state()
    if had_steps:  # A failed restore may have moved the iterator.
      logging.warning('No checkpoint of %s restores; training from the start.', workdir)
      train_iterator = make_iterator()
  del params
  state = parallel.replicate(state)
  checkpointing.save_config(config, workdir)

  eval_enabled = config.eval_every_steps > 0 and bool(config.data.eval_split)
  predict_fn = slice_scoring.make_tile_predict_fn(model)
  writer = SummaryWriter(workdir)
  buffer = _MetricsBuffer(parallel)
  result['step'] = start_step
  logging.info('Training %d steps (%d examples, global batch %d, %d device(s), %s).',
               total_steps, num_train_examples, config.batch_size, jax.device_count(),
               config.parallel)
  step = start_step
  window_start, window_steps = time.time(), 0
  finished = False
  try:
    with watcher.polling():
      stopping_on_error = True
      try:
        while step < total_steps:
          state, metrics = parallel.step(state, parallel.shard_batch(next(train_iterator)))
          step += 1
          window_steps += 1
          buffer.add(step, metrics)
          is_last = step == total_steps
          preempted = watcher.should_stop(step)
          log_now = step % config.log_every_steps == 0 or is_last or preempted
          eval_now = eval_enabled and (step % config.eval_every_steps == 0 or is_last)
          save_now = step % config.checkpoint_every_steps == 0 or is_last or preempted
          if not (log_now or eval_now or save_now):
            continue
          buffer.check_finite()
          if log_now:
            _log_train_metrics(writer, buffer.pop_means(), step, total_steps,
                               steps=window_steps, images=window_steps * config.batch_size,
                               seconds=time.time() - window_start)
            window_start, window_steps = time.time(), 0
          step_validation = {}
          if eval_now:
            eval_params = parallel.fetch(
                state.ema_params if config.optim.ema_decay else state.params)
            predictions = evaluate.predict_split(config, eval_params, config.data.eval_split,
                                                 predict_fn=predict_fn)
            step_validation = result['validation'] = evaluate.compute_metrics(predictions)
            writer.write_scalars(step, {f'validation/{k}': v
                                        for k, v in step_validation.items()})
            logging.info('step %d validation (%s): %s', step, config.data.eval_split,
                         evaluate.format_metrics(step_validation))
          if save_now:
            checkpointing.save(manager, step, parallel.to_global(state), train_iterator,
                               metrics=step_validation)
          if preempted:
            logging.warning('SIGTERM: saved step %d to %s; rerun the same command to resume.',
                            step, workdir)
            result['preempted'] = True
            break
        result['step'] = step
        stopping_on_error = False
      except NonFiniteLossError as error:
        manager.wait_until_finished()
        last_good = manager.latest_step()
        where = (f'the last good checkpoint is step {last_good} in '
                 f'{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}'
                 if last_good is not None else 'no checkpoint was written')
        raise NonFiniteLossError(
            f'{error} Training stopped; {where}. Lower config.optim.learning_rate, raise '
            'config.optim.warmup_steps or set config.optim.grad_clip_norm, then rerun (it '
            'resumes from that checkpoint).') from None
      finally:
        _close_all([manager.wait_until_finished, manager.close, writer.flush],
                   error_in_flight=stopping_on_error)

    test_split = config.data.test_split
    if result['preempted'] or not test_split:
      pass
    elif _split_exists(config.data, test_split):
      result['test'] = evaluate.evaluate_checkpoint(
          workdir, test_split, predict_fn=predict_fn, show_progress=process_index == 0)
      writer.write_scalars(step, {f'test/{k}': v for k, v in result['test'].items()})
      if process_index == 0:
        print(f'{test_split}: {evaluate.format_metrics(result["test"])}', flush=True)
    else:
      logging.warning('No %r split in %s; skipping the test evaluation.', test_split,
                      config.data.name)
    finished = True
  finally:
    _close_all([writer.close], error_in_flight=not finished)


def _close_all(closers: List[Callable[[], Any]], *, error_in_flight: bool) -> None:
  """Calls each closer; raises the first error after all ran.

  When an error is already on its way out, closing errors are only logged, so
  that the error that stopped the run (e.g. a checkpoint write failing on a
  full disk) is the one reported, not a TensorBoard flush failing after it.
  """
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      if error_in_flight or first is not None:
        logging.error('While stopping: %s', command_errors.one_line(e))
      else:
        first = e
  if first is not None:
    raise first


def _log_train_metrics(writer: 'SummaryWriter', means: Dict[str, float], step: int,
                       total_steps: int, *, steps: int, images: int, seconds: float) -> None:
  """Writes a window's mean train metrics and throughput; logs a line with ETA."""
  means['steps_per_second'] = steps / seconds
  means['images_per_second'] = images / seconds
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  logging.info('step %d/%d  loss %.4f  mae %.3f  lr %.2e  %.1f img/s  ETA %s', step,
               total_steps, means['loss'], means['mae'], means['learning_rate'],
               means['images_per_second'],
               _format_seconds((total_steps - step) / means['steps_per_second']))


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def _define_flags() -> Dict[str, Any]:
  """Defines the command's flags (only when run as a command)."""
  return {
      'config': config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                                lock_config=True),
      'workdir': flags.DEFINE_string('workdir', None,
                                     'Directory for checkpoints, logs and reports.'),
      'coordinator_address': flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0, for '
          'jax.distributed.initialize when config.distributed (auto-detected if unset).'),
      'num_processes': flags.DEFINE_integer(
          'num_processes', None, 'Number of processes (with --coordinator_address).'),
      'process_id': flags.DEFINE_integer('process_id', None,
                                         'This process (with --coordinator_address).'),
  }


def main(argv, command_flags: Dict[str, Any]):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  values = {name: holder.value for name, holder in command_flags.items()}
  config, workdir = values['config'], values['workdir']
  if config is None or workdir is None:
    raise app.UsageError('Give --config=configs/NAME.py and --workdir=DIR.')
  checkpointing.quiet_library_logging()
  if config.distributed:
    jax.distributed.initialize(coordinator_address=values['coordinator_address'],
                               num_processes=values['num_processes'],
                               process_id=values['process_id'])
  logging.info('JAX %s: process %d/%d, %d local / %d global device(s) (%s).',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  train_and_evaluate(config, workdir)


def run():
  """Console entry point `mdiqa-train`."""
  command_errors.run(functools.partial(main, command_flags=_define_flags()), 'mdiqa-train')


if __name__ == '__main__':
  run()
