"""The training job: build the data, train, checkpoint, evaluate on the test split.

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
workdir stops at once, naming the first (`workdir_lock`). A
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

from absl import logging
import jax
import ml_collections

from mdiqa_jax import checkpointing
from mdiqa_jax import command_errors
from mdiqa_jax import config_validation
from mdiqa_jax import losses
from mdiqa_jax import models
from mdiqa_jax import optim
from mdiqa_jax import preemption
from mdiqa_jax import train_step as train_step_lib
from mdiqa_jax import workdir_lock
from mdiqa_jax.data import pipeline
from mdiqa_jax.evaluation import evaluate
from mdiqa_jax.evaluation.report import format_metrics
from mdiqa_jax.inference import scoring
from mdiqa_jax.inference.split import predict_split


from mdiqa_jax.training.progress import (NonFiniteLossError, SummaryWriter, MetricsBuffer,
                                         log_train_metrics)
from mdiqa_jax.training.setup import (split_exists, load_pretrained_backbones,
                                      prepare_and_validate_data, total_train_steps)


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
  with preemption.PreemptionWatcher() as watcher:
    try:
      prepare_and_validate_data(config)
      with workdir_lock.workdir_lock(workdir):
        _train_and_evaluate(config, workdir, watcher, result)
    except preemption.Preemption:
      logging.warning('SIGTERM: stopped at step %d before the job ended; everything it wrote '
                      'is complete. Rerun the same command to continue.', result['step'])
      result['preempted'] = True
  return result


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        watcher: preemption.PreemptionWatcher,
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
  tx, learning_rate_fn = optim.create_optimizer(config.optim, params, total_steps)
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
  if had_steps:
    checkpointing.check_resumable(workdir)
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
  predict_fn = scoring.make_tile_predict_fn(model)
  writer = SummaryWriter(workdir)
  buffer = MetricsBuffer(parallel)
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
            log_train_metrics(writer, buffer.pop_means(), step, total_steps,
                               steps=window_steps, images=window_steps * config.batch_size,
                               seconds=time.time() - window_start)
            window_start, window_steps = time.time(), 0
          step_validation = {}
          if eval_now:
            eval_params = parallel.fetch(
                state.ema_params if config.optim.ema_decay else state.params)
            predictions = predict_split(config, eval_params, config.data.eval_split,
                                        predict_fn=predict_fn)
            step_validation = result['validation'] = evaluate.compute_metrics(predictions)
            writer.write_scalars(step, {f'validation/{k}': v
                                        for k, v in step_validation.items()})
            logging.info('step %d validation (%s): %s', step, config.data.eval_split,
                         format_metrics(step_validation))
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
    elif split_exists(config.data, test_split):
      result['test'] = evaluate.evaluate_checkpoint(
          workdir, test_split, predict_fn=predict_fn, show_progress=process_index == 0)
      writer.write_scalars(step, {f'test/{k}': v for k, v in result['test'].items()})
      if process_index == 0:
        print(f'{test_split}: {format_metrics(result["test"])}', flush=True)
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
