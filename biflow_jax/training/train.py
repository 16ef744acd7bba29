"""The training loop: `train_and_evaluate(config, workdir)`.

The loop's cadence and care only: the experiment (plan, models, optimiser, mesh, state
layout and the jitted, sharded step) comes from `experiment.build_experiment`, the
objective from `biflow.loss_fn`, the step from `step.train_step`, grids from
`inference`, held-out bits/dim from `evaluation.likelihood`. Metrics go through clu
writers; orbax checkpoints hold state and data iterator and restore onto another mesh;
SIGTERM (how preemption arrives) and Ctrl-C (SIGINT) finish the step, save and stop
cleanly; a second Ctrl-C stops at once without saving. Every process runs the same
loop; process 0 alone writes logs, samples and config, while every process writes its
own checkpoint shards.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath

from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import likelihood
from biflow_jax.inference import decoders
from biflow_jax.objective import phases
from biflow_jax.runtime import cli, console, files, parallel, summaries
from biflow_jax.training import checkpoints, init_from, posthoc_ema, workdir_lock
from biflow_jax.training.experiment import Experiment, build_experiment
from biflow_jax.training.train_state import TrainState


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps: the run stops, its checkpoints untouched."""


class Interrupted(Exception):
  """Ctrl-C stopped training after it saved (the message says what is on disk); the entry
  point exits with status 130, as a program stopped by SIGINT does."""


class _StopSignals:
  """Turns SIGTERM (how preemption arrives) and SIGINT (Ctrl-C) into a flag the loop
  checks between steps; the loop then saves a checkpoint, waits for it and stops.

  Python's own SIGINT handling raises KeyboardInterrupt wherever the main thread is,
  e.g. while orbax commits an async save: the step was announced but never written, and
  orbax's threads failed at interpreter shutdown. A second Ctrl-C (someone who will not
  wait for the save) exits at once with status 130, saying which complete checkpoint a
  rerun resumes from; the step being written stays an `*.orbax-checkpoint-tmp`
  directory, which restore ignores and the next save replaces.
  """

  def __init__(self, checkpoint_dir: epath.Path):
    self.requested: int | None = None  # the first signal received
    self._dir = checkpoint_dir
    self._previous: dict[int, object] = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:
      if signum == signal.SIGINT:
        self._abandon()
      return  # a repeated SIGTERM changes nothing: the save is already on its way
    self.requested = signum
    # Straight to fd 2, not through logging: the signal can land while the main thread is
    # inside a log handler's flush, and logging again from here then fails with
    # "reentrant call inside BufferedWriter" (a traceback in the middle of a clean stop).
    # The loop logs the stop itself after the step (see `_stop_reason`).
    if signum == signal.SIGINT:
      _say('Ctrl-C: finishing this step, saving a checkpoint and stopping (Ctrl-C again '
           'stops at once without saving).')
    else:
      _say('SIGTERM received: saving a checkpoint and exiting.')

  def _abandon(self):
    _say(f'second Ctrl-C: stopping now without saving; '
         f'{checkpoints.newest_complete(self._dir)}. Rerun the same command to resume from it.')
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except RuntimeError:  # interrupted inside this stream's own write: its buffer is lost
        pass
    # os._exit: a KeyboardInterrupt would unwind into orbax's threads at shutdown (pages of
    # tracebacks); the workdir lock is a flock, which the kernel drops with the process.
    os._exit(cli.INTERRUPTED_STATUS)  # pylint: disable=protected-access  (130, as shells report)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _say(message: str) -> None:
  """One line to stderr from a signal handler: os.write takes no Python-level lock."""
  os.write(2, (message + '\n').encode())


def _stop_reason(signum: int) -> str:
  return 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Per-key means; a window that crosses a phase boundary has keys only some steps had."""
  keys = sorted({k for metrics in history for k in metrics})
  return {k: float(np.mean([m[k] for m in history if k in m])) for k in keys}


def _write_config(config, workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    # Strict JSON (a NaN given as a value is written as a string naming it).
    (workdir / 'config.json').write_text(files.json_text(
        json.loads(config.to_json_best_effort()), 'config.json'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | epath.PathLike,
                       stop_at: int | None = None) -> TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state.

  `stop_at` ends this invocation after that global step as a preemption would
  (checkpoint saved), so a later call resumes from it. Before anything is loaded or
  compiled: workdir_lock.WorkdirNotWritableError for a workdir that cannot be written and
  workdir_lock.WorkdirBusyError while another job trains in it. A checkpoint that cannot
  be written stops the job with checkpoints.CheckpointSaveError.
  """
  exp = build_experiment(config)  # bad values and missing weight files fail here
  workdir = epath.Path(workdir)
  # config.model.init_from is read and checked here, before anything is written or compiled
  # (None when it is empty or the workdir has its own checkpoint to resume from).
  start = init_from.prepare(exp, workdir)
  # A read-only or unwritable workdir, and a second job on it, stop here, before anything
  # is loaded or compiled. Process 0 holds the lock for the whole job.
  workdir_lock.check_writable(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with (workdir_lock.hold(workdir) if parallel.is_main_process() else contextlib.nullcontext(),
        parallel.exit_promptly_if_a_process_is_lost()):
    return _train(config, exp, workdir, start, stop_at)


def _train(config: ml_collections.ConfigDict, exp: Experiment, workdir: epath.Path,
           start: init_from.Start | None, stop_at: int | None) -> TrainState:
  plan, mesh = exp.plan, exp.mesh
  end = phases.total_steps(plan)
  logging.info('mesh %s over %d devices (%d processes), params %s', dict(mesh.shape),
               mesh.size, jax.process_count(), config.mesh.param_sharding)
  data_iter = input_pipeline.create_train_iterator(config, rows=exp.process_rows())
  heldout = input_pipeline.load_heldout(config, config.eval_batches * config.batch_size)
  state = exp.create_state()

  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    state, restored_step = checkpoints.restore(
        manager, exp.abstract_state, data_iter, set_aside_unreadable=True)
    logging.info('Resumed from step %d in %s', restored_step, manager.directory)
  elif start is not None:
    state = init_from.apply(state, start)
  _write_config(config, workdir)
  tracker = posthoc_ema.Tracker.from_config(config, workdir)
  if tracker is not None:
    tracker.start(state, int(state.step))

  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  step = int(state.step)
  summaries.write_config(writer, step, config)
  report = periodic_actions.ReportProgress(num_train_steps=end, writer=writer)
  to_pixels = decoders.pixel_decoder(exp.models.frozen, exp.frozen_params)
  samplers = decoders.make_samplers(config, decoders.panel_decoders(config))
  last = end if stop_at is None else min(end, stop_at)
  pending, t_log, steps_at_log = [], time.time(), step
  # Reading the skip counter syncs with the device, so it is read only this often while
  # steps are finite, and after every step once one was skipped: the job then stops at
  # exactly max_consecutive_skips (the count at a periodic read is at most the interval).
  skip_check_every = max(1, min(config.log_every, config.max_consecutive_skips))
  skipping = False
  announcer = checkpoints.Announcer(manager, announce=parallel.is_main_process())
  checkpoint_dir = epath.Path(manager.directory)

  with _StopSignals(checkpoint_dir) as signals:
    while step < last:
      phase = phases.phase_at(plan, step)
      batch = exp.global_batch(next(data_iter))
      state, metrics = exp.step(state, batch, exp.frozen_params, phase)
      if tracker is not None:
        tracker.update(state, phase.trainable)
      step += 1
      pending.append(metrics)
      report(step, time.time())
      announcer.poll()
      # Read once per step: a signal arriving later in this iteration is acted on after
      # the next step, never between deciding to save and deciding to stop.
      stop = signals.requested is not None
      if stop and parallel.is_main_process():
        logging.warning('%s: stopping after step %d.', _stop_reason(signals.requested), step)
      finished = step == last or stop
      if skipping or step % skip_check_every == 0 or finished:
        skips = int(state.skips)
        skipping = skips > 0
        if skips >= config.max_consecutive_skips:
          checkpoints.wait(manager)
          announcer.flush()
          manager.close()
          raise NonFiniteError(
              f'{skips} consecutive steps up to step {step} had a non-finite loss or gradient '
              f'and were skipped (config.max_consecutive_skips={config.max_consecutive_skips}); '
              f'no checkpoint is written while steps are skipped, and '
              f'{checkpoints.newest_complete(checkpoint_dir)}. Lower the learning rate or '
              'check the data, then rerun (a rerun resumes from that checkpoint, or starts '
              'afresh without one).')

      if step % config.log_every == 0 or finished:
        means = _mean_metrics(jax.device_get(pending))
        if not all(np.isfinite(v) for v in means.values()):
          logging.error('non-finite metrics at step %d: %s', step, means)
        means['steps_per_sec'] = (step - steps_at_log) / max(time.time() - t_log, 1e-9)
        writer.write_scalars(step, means)
        if parallel.is_main_process():
          logging.info(console.train_line(step, last, phase.name, means, means['steps_per_sec']))
        pending, t_log, steps_at_log = [], time.time(), step
      if step % config.eval_every == 0 or step == end:
        heldout_metrics = likelihood.heldout_metrics(
            exp.models.flow, state.ema['forward'], heldout, config, mesh)
        writer.write_scalars(step, heldout_metrics)
        if parallel.is_main_process():
          logging.info(console.metrics_line(step, 'held-out (EMA F)', heldout_metrics))
      if input_pipeline.is_image_data(config) and (step % config.sample_every == 0
                                                   or step == end):
        path, outputs = decoders.write_sample_grid(
            config, samplers, state.ema, workdir / 'samples' / f'step_{step}.png',
            to_pixels=to_pixels)
        summaries.write_sample_grids(writer, step, outputs, config.model.num_classes)
        if parallel.is_main_process():
          logging.info('wrote %s (%s)', path, ', '.join(samplers))
      checkpointing = (step % config.checkpoint_every == 0 or finished) and int(state.skips) == 0
      if tracker is not None:
        # Before the checkpoint: a checkpoint never exists without the snapshot it resumes from.
        tracker.maybe_save(step, checkpointing)
      if checkpointing:
        checkpoints.save(manager, step, state, data_iter)
        if step % config.log_every == 0 or finished:
          announcer.saved(step)  # said once orbax has committed it
      if stop:
        break

    # Inside the handlers: a Ctrl-C while the last save commits is the abandon above,
    # not a KeyboardInterrupt in the middle of orbax's commit.
    checkpoints.wait(manager)  # a save that failed in the background is reported here
    announcer.flush()
    manager.close()
  writer.flush()
  if signals.requested == signal.SIGINT:
    raise Interrupted(f'stopped by Ctrl-C after step {step}: '
                      f'{checkpoints.newest_complete(checkpoint_dir)}. Rerun the same command '
                      'to resume from it.')
  return state
