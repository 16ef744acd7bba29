"""The training loop: `train_and_evaluate(config, workdir)`.

One jitted, pure `train_step` per phase of the plan (the phase is a static argument,
so each phase compiles once); metrics through clu writers; held-out bits/dim and PNG
sample grids at intervals; orbax checkpoints of state and data iterator; SIGTERM
(how preemption arrives) saves and exits cleanly.
"""
from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from biflow_jax import checkpoints, images, input_pipeline, objectives, optim, sampling
from biflow_jax.models.flow import ForwardFlow

EVAL_NOISE_SEED = 1234
SAMPLE_SEED = 4321


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any      # {'forward': F's params, later 'reverse': G's}
  opt_state: Any
  ema: Any         # same tree as params
  rng: jax.Array   # base key; step keys are fold_in(rng, step), so resume is exact


def init_state(config: ml_collections.ConfigDict, flow: ForwardFlow, tx) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  x = jnp.zeros((1,) + flow.image_shape, jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if flow.num_classes else None
  params = {'forward': flow.init(init_rng, x, y)['params']}
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    ema=optim.init_ema(params), rng=train_rng)


def preprocess(batch: dict, rng: jax.Array, config, num_classes: int, train: bool):
  """uint8 images -> x in [-1, 1], x~ = x + sigma * eps; labels dropped to -1 w.p. p."""
  noise_rng, drop_rng = jax.random.split(rng)
  x = batch['image'].astype(jnp.float32) / 127.5 - 1.0
  x_noisy = x + config.objective.noise_sigma * jax.random.normal(noise_rng, x.shape)
  if not num_classes:
    return x, x_noisy, None
  y = batch['label'].astype(jnp.int32)
  if train and config.objective.label_drop_prob > 0:
    drop = jax.random.uniform(drop_rng, y.shape) < config.objective.label_drop_prob
    y = jnp.where(drop, -1, y)
  return x, x_noisy, y


def train_step(state: TrainState, batch: dict, *, flow: ForwardFlow, tx, config,
               plan, phase: optim.Phase) -> tuple[TrainState, dict]:
  rng = jax.random.fold_in(state.rng, state.step)
  _, x_noisy, y = preprocess(batch, rng, config, flow.num_classes, train=True)
  num_dims = flow.num_dims

  def loss_fn(params):
    z, logdet, _ = flow.apply({'params': params['forward']}, x_noisy, y)
    nll = objectives.gaussian_nll(z, logdet)
    nll_per_dim = jnp.mean(nll) / num_dims
    loss = phase.weight('nll') * nll_per_dim
    return loss, dict(nll_per_dim=nll_per_dim, logdet_per_dim=jnp.mean(logdet) / num_dims,
                      bits_per_dim=jnp.mean(objectives.bits_per_dim(nll, num_dims)),
                      z_rms=jnp.sqrt(jnp.mean(jnp.square(z))))

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  lrs = optim.learning_rates(state.opt_state, config, plan)
  params, opt_state = optim.apply_gradients(tx, grads, state.opt_state, state.params,
                                            phase.trainable)
  ema = optim.update_ema(state.ema, params, config, phase.trainable,
                         steps=optim.group_steps(opt_state))
  metrics = dict(loss=loss, **aux)
  for group, norm in optim.group_grad_norms(grads).items():
    if group in state.params:
      metrics[f'grad_norm/{group}'] = norm
      metrics[f'lr/{group}'] = lrs[group]
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
  return new_state, metrics


def heldout_bits_per_dim(flow: ForwardFlow, forward_params, heldout: dict, config) -> float:
  """Mean bits/dim of x~ over the held-out set (fixed noise, true labels)."""
  @jax.jit
  def nll_fn(params, batch, rng):
    _, x_noisy, y = preprocess(batch, rng, config, flow.num_classes, train=False)
    z, logdet, _ = flow.apply({'params': params}, x_noisy, y)
    return objectives.gaussian_nll(z, logdet)

  nlls = []
  batches = input_pipeline.heldout_batches(heldout, config.batch_size)
  for i, batch in enumerate(batches):
    if i >= config.eval_batches:
      break
    nlls.append(np.asarray(nll_fn(forward_params, batch,
                                  jax.random.PRNGKey(EVAL_NOISE_SEED + i))))
  if not nlls:
    raise ValueError(f'held-out set has fewer than batch_size={config.batch_size} examples')
  return float(np.mean(objectives.bits_per_dim(np.concatenate(nlls), flow.num_dims)))


def write_sample_grid(config, sampler, params, path: Path, num: int | None = None,
                      temperature: float | None = None) -> tuple[Path, np.ndarray]:
  num = num or config.sample.num
  labels = sampling.class_rows(num, config.model.num_classes)
  temperature = config.sample.temperature if temperature is None else temperature
  x = np.asarray(sampler(params, jax.random.PRNGKey(SAMPLE_SEED), labels, temperature))
  rows = config.model.num_classes or None
  rows = rows if rows and num % rows == 0 else None
  return images.save_png(images.make_grid(images.to_uint8(x), rows=rows), path), x


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _write_config(config, workdir: Path) -> None:
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       stop_at: int | None = None) -> TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state.

  `stop_at` ends this invocation after that global step as a preemption would
  (checkpoint saved), so a later call resumes from it.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  plan = optim.build_phase_plan(config)
  end = optim.total_steps(plan)
  flow = ForwardFlow.from_config(config.model)
  tx = optim.make_optimizer(config, plan)
  data_iter = input_pipeline.create_train_iterator(config)
  heldout = input_pipeline.load_heldout(config)
  state = init_state(config, flow, tx)

  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    state, restored_step = checkpoints.restore(
        manager, checkpoints.abstract_like(state), data_iter)
    logging.info('Resumed from step %d in %s', restored_step, manager.directory)
  _write_config(config, workdir)

  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  step = int(state.step)
  report = periodic_actions.ReportProgress(num_train_steps=end, writer=writer)
  step_fn = jax.jit(functools.partial(train_step, flow=flow, tx=tx, config=config, plan=plan),
                    static_argnames=('phase',), donate_argnums=(0,))
  sampler = sampling.make_sampler(config, decoder=config.sample.decoder,
                                  denoise=config.sample.denoise, guidance=config.sample.guidance)
  last = end if stop_at is None else min(end, stop_at)
  pending, t_log, steps_at_log = [], time.time(), step

  with _Preemption() as preemption:
    while step < last:
      phase = optim.phase_at(plan, step)
      batch = next(data_iter)
      state, metrics = step_fn(state, batch, phase=phase)
      step += 1
      pending.append(metrics)
      report(step, time.time())
      finished = step == last or preemption.requested

      if step % config.log_every == 0 or finished:
        means = {k: float(np.mean(v)) for k, v in jax.device_get(
            jax.tree.map(lambda *xs: np.stack(xs), *pending)).items()}
        if not all(np.isfinite(v) for v in means.values()):
          logging.error('non-finite metrics at step %d: %s', step, means)
        means['steps_per_sec'] = (step - steps_at_log) / max(time.time() - t_log, 1e-9)
        writer.write_scalars(step, means)
        pending, t_log, steps_at_log = [], time.time(), step
      if step % config.eval_every == 0 or step == end:
        bpd = heldout_bits_per_dim(flow, state.ema['forward'], heldout, config)
        writer.write_scalars(step, {'heldout/bits_per_dim': bpd})
      if (step % config.sample_every == 0 or step == end) and jax.process_index() == 0:
        path, _ = write_sample_grid(config, sampler, state.ema,
                                    workdir / 'samples' / f'step_{step}.png')
        logging.info('wrote %s', path)
      if step % config.checkpoint_every == 0 or finished:
        checkpoints.save(manager, step, state, data_iter)
      if preemption.requested:
        break

  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return state


def restore_for_inference(config, workdir: str | Path) -> tuple[ForwardFlow, TrainState, int]:
  """Model and train state from the latest checkpoint (no data iterator)."""
  plan = optim.build_phase_plan(config)
  flow = ForwardFlow.from_config(config.model)
  tx = optim.make_optimizer(config, plan)
  abstract = jax.eval_shape(lambda: init_state(config, flow, tx))
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  try:
    state, step = checkpoints.restore(manager, abstract)
  finally:
    manager.close()
  return flow, state, step


def sample_from_checkpoint(config, workdir: str | Path, name: str | None = None) -> Path:
  """`--mode=sample`: a grid (and the raw samples) from the latest checkpoint's EMA params."""
  workdir = Path(workdir)
  _, state, step = restore_for_inference(config, workdir)
  s = config.sample
  sampler = sampling.make_sampler(config, decoder=s.decoder, denoise=s.denoise,
                                  guidance=s.guidance)
  name = name or f'{s.decoder}_w{s.guidance:g}_t{s.temperature:g}_step{step}'
  path, x = write_sample_grid(config, sampler, state.ema, workdir / 'samples' / f'{name}.png')
  np.savez(workdir / 'samples' / f'{name}.npz', images=images.to_uint8(x),
           labels=np.asarray(sampling.class_rows(s.num, config.model.num_classes)))
  logging.info('wrote %s', path)
  return path


def evaluate_checkpoint(config, workdir: str | Path) -> dict:
  """`--mode=eval`: held-out bits/dim of the latest checkpoint -> DIR/eval.json."""
  workdir = Path(workdir)
  flow, state, step = restore_for_inference(config, workdir)
  heldout = input_pipeline.load_heldout(config)
  result = {'step': step, 'noise_sigma': float(config.objective.noise_sigma),
            'heldout_bits_per_dim_ema': heldout_bits_per_dim(flow, state.ema['forward'], heldout, config),
            'heldout_bits_per_dim': heldout_bits_per_dim(flow, state.params['forward'], heldout, config)}
  (workdir / 'eval.json').write_text(json.dumps(result, indent=2))
  logging.info('eval: %s', result)
  return result
