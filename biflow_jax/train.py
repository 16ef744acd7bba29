"""The training loop: `train_and_evaluate(config, workdir)`.

One jitted, pure `train_step` per phase of the plan (the phase is a static argument,
so each phase compiles once), over the device mesh of `config.mesh` (parallel.py:
batch split over every device, state replicated or FSDP-sharded); metrics through clu
writers; held-out bits/dim and PNG sample grids at intervals; orbax checkpoints of state
and data iterator, restorable onto another mesh; SIGTERM (how preemption arrives) saves
and exits cleanly. Every process runs the same loop; process 0 alone writes logs,
samples and config, while every process writes its own checkpoint shards.
"""
from __future__ import annotations

import functools
import signal
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from clu import metric_writers, periodic_actions

from biflow_jax import (checkpoints, config_lib, frozen, images, input_pipeline, objectives,
                        optim, parallel, sampling)
from biflow_jax.models import layers
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
  skips: jax.Array  # consecutive steps skipped for a non-finite loss or gradient


class Models(NamedTuple):
  flow: ForwardFlow
  generator: Any  # ReverseModel, or None while config.reverse.enabled is False
  frozen: Any = None  # frozen.FrozenNets (VAE decoder, perceptual nets) when the config uses them


def build_models(config: ml_collections.ConfigDict) -> Models:
  flow = ForwardFlow.from_config(config.model)
  generator = None
  if config.reverse.enabled:
    from biflow_jax.models.generator import ReverseModel  # pylint: disable=g-import-not-at-top
    generator = ReverseModel.from_config(config.reverse, config.model)
  return Models(flow, generator)


def init_state(config: ml_collections.ConfigDict, models: Models, tx) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  init_rng, reverse_rng, train_rng = jax.random.split(rng, 3)
  flow = models.flow
  x = jnp.zeros((1,) + flow.image_shape, jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if flow.num_classes else None
  params = {'forward': flow.init(init_rng, x, y)['params']}
  if models.generator is not None:
    z = jnp.zeros((1, flow.num_tokens, flow.token_dim), jnp.float32)
    params['reverse'] = models.generator.init(reverse_rng, z, y, jnp.zeros((1,)))['params']
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    ema=optim.init_ema(params), rng=train_rng, skips=jnp.int32(0))


def abstract_state(config, models: Models, tx, mesh) -> TrainState:
  """The train state's shapes, dtypes and shardings on the mesh: what a fresh state is
  created as and what a checkpoint is restored onto (any mesh)."""
  abstract = jax.eval_shape(lambda: init_state(config, models, tx))
  return parallel.with_shardings(abstract, parallel.state_shardings(abstract, mesh, config.mesh))


def create_state(config, models: Models, tx, mesh) -> tuple[TrainState, Any]:
  """A fresh train state laid out on the mesh (initialised in place, never gathered)."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_state(config, models, tx, mesh))
  return jax.jit(lambda: init_state(config, models, tx), out_shardings=shardings)(), shardings


def jit_train_step(config, models: Models, tx, plan, mesh, state_shardings):
  """The train step jitted over the mesh: (state, global batch, frozen params, phase=static)
  -> (state, metrics). Frozen nets' params are replicated on every device."""
  def step(state, batch, frozen_params, phase):
    return train_step(state, batch, frozen_params, models=models, tx=tx, config=config,
                      plan=plan, phase=phase)
  jitted = jax.jit(step, in_shardings=(state_shardings, parallel.batch_sharding(mesh),
                                       parallel.replicated(mesh)),
                   out_shardings=(state_shardings, parallel.replicated(mesh)),
                   static_argnums=(3,), donate_argnums=(0,))
  return lambda state, batch, frozen_params=None, *, phase: jitted(
      state, batch, frozen_params or {}, phase)


def example_batch(config, batch_size: int | None = None) -> dict:
  """Zeros shaped like a training batch of this config's data source (benchmarks, lowering)."""
  n = config.batch_size if batch_size is None else batch_size
  m = config.model
  shape = (n, m.image_size, m.image_size, m.in_channels)
  batch = {'label': np.zeros((n,), np.int32)}
  if frozen.uses_latents(config):
    batch.update(latent_mean=np.zeros(shape, np.float32), latent_std=np.ones(shape, np.float32))
  else:
    batch['image'] = np.zeros(shape, np.uint8)
  return batch


def preprocess(batch: dict, rng: jax.Array, config, num_classes: int, train: bool):
  """Batch -> (x, x~ = x + sigma * eps, labels dropped to -1 w.p. p).

  x is uint8 images mapped to [-1, 1], or, from a latent cache, a fresh posterior draw
  (mean + std * eps) * vae.scaling_factor.
  """
  drop_prob = config.objective.label_drop_prob if train else 0.0
  return _noisy_inputs(batch, rng, config.objective.noise_sigma, drop_prob, num_classes,
                       float(config.vae.scaling_factor))


def _noisy_inputs(batch: dict, rng: jax.Array, sigma: float, drop_prob: float, num_classes: int,
                  scaling_factor: float = 1.0):
  noise_rng, drop_rng, latent_rng = jax.random.split(rng, 3)
  if 'latent_mean' in batch:
    from biflow_jax import latents  # pylint: disable=g-import-not-at-top
    x = latents.sample_latents(batch['latent_mean'], batch['latent_std'], latent_rng,
                               scaling_factor).astype(jnp.float32)
  else:
    x = batch['image'].astype(jnp.float32) / 127.5 - 1.0
  x_noisy = x + sigma * jax.random.normal(noise_rng, x.shape)
  if not num_classes:
    return x, x_noisy, None
  y = batch['label'].astype(jnp.int32)
  if drop_prob > 0:
    drop = jax.random.uniform(drop_rng, y.shape) < drop_prob
    y = jnp.where(drop, -1, y)
  return x, x_noisy, y


def _generator_outputs(generator, params, z, y, w, use_cfg: bool):
  """G's (output, projections); with training-time CFG the combination
  (G(z|c,w) + w G(z|null,w)) / (1 + w) is what gets supervised (METHOD.md sec. 3.1)."""
  out, projections = generator.apply({'params': params}, z, y, w)
  if not use_cfg:
    return out, projections
  null = None if y is None else jnp.full_like(y, -1)
  out_u, projections_u = generator.apply({'params': params}, z, null, w)
  combine = lambda c, u: objectives.cfg_combine(c, u, w)
  return combine(out, out_u), [combine(c, u) for c, u in zip(projections, projections_u)]


def inverse_matching_target(flow: ForwardFlow, forward_params, z, y, config) -> jax.Array:
  """sg(F^-1(z)) as tokens, by the fixed-point inverse (tolerance and sweeps from config)."""
  obj = config.objective
  x, _, _ = flow.apply({'params': jax.lax.stop_gradient(forward_params)}, z, y,
                       method=ForwardFlow.inverse, mode='fixed_point', tol=obj.inverse_tol,
                       max_iters=obj.inverse_max_iters or None, num_groups=obj.inverse_groups)
  return jax.lax.stop_gradient(layers.patchify(x, flow.patch_size))


def reverse_objective(models: Models, params, x_clean, x_noisy, y, trajectory, rng, config,
                      frozen_params=None):
  """L_reverse for G: paired trajectory alignment, or inverse matching on fresh noise."""
  flow, generator = models.flow, models.generator
  obj = config.objective
  batch = x_clean.shape[0]
  w_rng, z_rng = jax.random.split(rng)
  use_cfg = obj.cfg_w_max > 0 and flow.num_classes > 0
  w = (objectives.sample_guidance_scale(w_rng, batch, obj.cfg_w_max, obj.cfg_zero_prob)
       if use_cfg else jnp.zeros((batch,), jnp.float32))
  if obj.reverse_target == 'inverse_matching':
    z = jax.random.normal(z_rng, (batch, flow.num_tokens, flow.token_dim))
    target = inverse_matching_target(flow, params['forward'], z, y, config)
    out, _ = _generator_outputs(generator, params['reverse'], z, y, w, use_cfg)
    return objectives.inverse_matching_loss(out, target)
  z = jax.lax.stop_gradient(trajectory[-1])
  out, projections = _generator_outputs(generator, params['reverse'], z, y, w, use_cfg)
  decode, terms = frozen.perceptual_terms(models.frozen, frozen_params or {}, flow.patch_size,
                                          flow.image_shape)
  return objectives.reverse_loss(
      out, projections, layers.patchify(x_clean, flow.patch_size), trajectory,
      mode=obj.reverse_mode, norm_control=obj.norm_control, adaptive_p=obj.adaptive_p,
      eps=obj.adaptive_eps, denoise=obj.denoise, token_weighting=obj.token_weighting,
      perceptual_terms=terms, perceptual_decode=decode)


def train_step(state: TrainState, batch: dict, frozen_params=None, *, models: Models, tx,
               config, plan, phase: optim.Phase) -> tuple[TrainState, dict]:
  """One update of the phase's trainable groups: L = w_nll L_NLL(F) + w_rev L_reverse(G).

  `frozen_params`: weights of models.frozen (VAE decoder, perceptual nets), never updated.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  data_rng, reverse_rng = jax.random.split(rng)
  flow = models.flow
  x_clean, x_noisy, y = preprocess(batch, data_rng, config, flow.num_classes, train=True)
  num_dims = flow.num_dims
  nll_weight, reverse_weight = phase.weight('nll'), phase.weight('reverse')

  def loss_fn(params):
    forward = params['forward'] if phase.trains('forward') else jax.lax.stop_gradient(params['forward'])
    z, logdet, trajectory = flow.apply({'params': forward}, x_noisy, y)
    nll = objectives.gaussian_nll(z, logdet)
    nll_per_dim = jnp.mean(nll) / num_dims
    metrics = dict(nll_per_dim=nll_per_dim, logdet_per_dim=jnp.mean(logdet) / num_dims,
                   z_rms=jnp.sqrt(jnp.mean(jnp.square(z))))
    if not frozen.uses_latents(config):  # 8-bit bins exist in pixel space only
      metrics['bits_per_dim'] = jnp.mean(objectives.bits_per_dim(nll, num_dims))
    loss = nll_weight * nll_per_dim
    if reverse_weight > 0:
      reverse_loss, reverse_metrics = reverse_objective(
          models, params, x_clean, x_noisy, y, trajectory, reverse_rng, config, frozen_params)
      loss = loss + reverse_weight * reverse_loss
      metrics.update(reverse_metrics)
    return loss, metrics

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  lrs = optim.learning_rates(state.opt_state, config, plan)
  params, opt_state = optim.apply_gradients(tx, grads, state.opt_state, state.params,
                                            phase.trainable)
  ema = optim.update_ema(state.ema, params, config, phase.trainable,
                         steps=optim.group_steps(opt_state))
  # A non-finite loss or gradient skips the update: params, optimiser state and EMA
  # stay exactly as they were (the step counter and data still advance).
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  metrics = dict(loss=loss, skipped=1.0 - finite.astype(jnp.float32), **aux)
  for group, norm in optim.group_grad_norms(grads).items():
    if group in state.params:
      metrics[f'grad_norm/{group}'] = norm
      metrics[f'lr/{group}'] = lrs[group]
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state),
                            ema=keep(ema, state.ema),
                            skips=jnp.where(finite, 0, state.skips + 1).astype(jnp.int32))
  return new_state, metrics


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps: the run stops, its checkpoints untouched."""


@functools.partial(jax.jit, static_argnames=('flow', 'sigma', 'scaling_factor'))
def _heldout_nll(params, batch, rng, *, flow: ForwardFlow, sigma: float,
                 scaling_factor: float = 1.0) -> jax.Array:
  """Per-example NLL of x~; module-level so periodic evaluations reuse one compilation."""
  _, x_noisy, y = _noisy_inputs(batch, rng, sigma, 0.0, flow.num_classes, scaling_factor)
  z, logdet, _ = flow.apply({'params': params}, x_noisy, y)
  return objectives.gaussian_nll(z, logdet)


def heldout_nll_per_dim(flow: ForwardFlow, forward_params, heldout: dict, config,
                        mesh=None) -> float:
  """Mean NLL per dimension (nats) of x~ over the held-out set (fixed noise, true labels).

  With a mesh, each batch is split over its devices (every process takes its rows of
  the held-out arrays it has in memory) and every process must call this.
  """
  sigma = float(config.objective.noise_sigma)
  nlls = []
  rows = None if mesh is None else parallel.process_rows(mesh, config.batch_size)
  batches = input_pipeline.heldout_batches(heldout, config.batch_size)
  for i, batch in enumerate(batches):
    if i >= config.eval_batches:
      break
    if mesh is not None:
      batch = parallel.global_batch({k: v[rows] for k, v in batch.items()}, mesh,
                                    config.batch_size)
    nlls.append(parallel.to_host(_heldout_nll(
        forward_params, batch, jax.random.PRNGKey(EVAL_NOISE_SEED + i), flow=flow,
        sigma=sigma, scaling_factor=float(config.vae.scaling_factor))))
  if not nlls:
    raise ValueError(f'held-out set has fewer than batch_size={config.batch_size} examples')
  return float(np.mean(np.concatenate(nlls))) / flow.num_dims


def heldout_metrics(flow: ForwardFlow, forward_params, heldout: dict, config, mesh=None) -> dict:
  """What the periodic evaluation logs: NLL per dim, and bits/dim (8-bit pixel bins) for
  pixel data."""
  nll = heldout_nll_per_dim(flow, forward_params, heldout, config, mesh)
  metrics = {'heldout/nll_per_dim': nll}
  if not frozen.uses_latents(config):
    metrics['heldout/bits_per_dim'] = float(objectives.bits_per_dim(nll * flow.num_dims,
                                                                    flow.num_dims))
  return metrics


def heldout_bits_per_dim(flow: ForwardFlow, forward_params, heldout: dict, config,
                         mesh=None) -> float:
  """Mean bits/dim of x~ over the held-out set (pixel data)."""
  return heldout_metrics(flow, forward_params, heldout, config, mesh)['heldout/bits_per_dim']


def default_denoise(config, decoder: str) -> str:
  """G trained with learned denoising outputs clean images; F's inverses need 'score'."""
  if decoder == 'reverse' and config.objective.denoise == 'learned':
    return 'none'
  return config.sample.denoise


def panel_decoders(config) -> tuple[str, ...]:
  """What a training-time grid shows: every decoder side by side once G exists."""
  if config.reverse.enabled:
    return ('reverse', 'exact', 'fixed_point')
  return (config.sample.decoder,)


def decoder_guidance(config, decoder: str) -> float:
  return config_lib.reverse_guidance(config) if decoder == 'reverse' else config.sample.guidance


def make_samplers(config, decoders) -> dict[str, sampling.Sampler]:
  return {d: sampling.make_sampler(config, decoder=d, denoise=default_denoise(config, d))
          for d in decoders}


def write_sample_grid(config, samplers: dict, params, path: epath.PathLike, num: int | None = None,
                      temperature: float | None = None, to_pixels=None) -> tuple[epath.Path, dict]:
  """One PNG with a grid per decoder, side by side, all from the same noise and labels.

  `to_pixels` maps model-space samples to images (the VAE decoder for latent runs);
  outputs hold the images. Every process samples (the params may span hosts); process 0
  alone writes the file.
  """
  num = num or config.sample.num
  labels = sampling.class_rows(num, config.model.num_classes)
  temperature = config.sample.temperature if temperature is None else temperature
  rows = config.model.num_classes or None
  rows = rows if rows and num % rows == 0 else None
  outputs, grids = {}, []
  for name, sampler in samplers.items():
    x = sampler(params, jax.random.PRNGKey(SAMPLE_SEED), labels,
                guidance=decoder_guidance(config, name), temperature=temperature)
    if to_pixels is not None:
      x = to_pixels(x)
    outputs[name] = parallel.to_host(x)
    grids.append(images.make_grid(images.to_uint8(outputs[name]), rows=rows))
  if parallel.is_main_process():
    images.save_png(images.side_by_side(grids), path)
  return path, outputs


def pixel_decoder(models: Models, frozen_params: dict):
  """Jitted samples -> images for latent runs (VAE decode); None when samples are images."""
  if models.frozen is None or models.frozen.vae is None:
    return None
  decode = jax.jit(lambda p, x: frozen.to_images(models.frozen, p, x))
  return lambda x: decode(frozen_params, x)


def load_frozen(config, models: Models, with_perceptual: bool = True) -> tuple[Models, dict]:
  """Models with their frozen nets attached, and those nets' weights (from config files)."""
  nets, params = frozen.load(config, with_perceptual)
  return models._replace(frozen=nets), params


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


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Per-key means; a window that crosses a phase boundary has keys only some steps had."""
  keys = sorted({k for metrics in history for k in metrics})
  return {k: float(np.mean([m[k] for m in history if k in m])) for k in keys}


def _write_config(config, workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | epath.PathLike,
                       stop_at: int | None = None) -> TrainState:
  """Trains (or resumes) the run in `workdir`; returns the final state.

  `stop_at` ends this invocation after that global step as a preemption would
  (checkpoint saved), so a later call resumes from it.
  """
  config_lib.validate(config)
  plan = optim.build_phase_plan(config)
  end = optim.total_steps(plan)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  models = build_models(config)
  models, frozen_params = load_frozen(config, models)  # missing weight files fail here
  tx = optim.make_optimizer(config, plan)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(config.batch_size, mesh)
  logging.info('mesh %s over %d devices (%d processes), params %s', dict(mesh.shape),
               mesh.size, jax.process_count(), config.mesh.param_sharding)
  data_iter = input_pipeline.create_train_iterator(
      config, rows=parallel.process_rows(mesh, config.batch_size))
  heldout = input_pipeline.load_heldout(config, config.eval_batches * config.batch_size)
  state, state_shardings = create_state(config, models, tx, mesh)

  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    state, restored_step = checkpoints.restore(
        manager, checkpoints.abstract_like(state), data_iter, set_aside_unreadable=True)
    logging.info('Resumed from step %d in %s', restored_step, manager.directory)
  _write_config(config, workdir)

  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  step = int(state.step)
  report = periodic_actions.ReportProgress(num_train_steps=end, writer=writer)
  step_fn = jit_train_step(config, models, tx, plan, mesh, state_shardings)
  frozen_params = jax.device_put(frozen_params, parallel.replicated(mesh))
  to_pixels = pixel_decoder(models, frozen_params)
  samplers = make_samplers(config, panel_decoders(config))
  last = end if stop_at is None else min(end, stop_at)
  pending, t_log, steps_at_log = [], time.time(), step
  # Reading the skip counter syncs with the device, so it is read only this often.
  skip_check_every = max(1, min(config.log_every, config.max_consecutive_skips))

  with _Preemption() as preemption:
    while step < last:
      phase = optim.phase_at(plan, step)
      batch = parallel.global_batch(next(data_iter), mesh, config.batch_size)
      state, metrics = step_fn(state, batch, frozen_params, phase=phase)
      step += 1
      pending.append(metrics)
      report(step, time.time())
      finished = step == last or preemption.requested
      if step % skip_check_every == 0 or finished:
        skips = int(state.skips)
        if skips >= config.max_consecutive_skips:
          manager.wait_until_finished()
          manager.close()
          raise NonFiniteError(
              f'{skips} consecutive steps up to step {step} had a non-finite loss or gradient '
              f'and were skipped (config.max_consecutive_skips={config.max_consecutive_skips}). '
              f'The last checkpoint in {manager.directory} holds the last good weights; lower '
              'the learning rate or check the data, then resume.')

      if step % config.log_every == 0 or finished:
        means = _mean_metrics(jax.device_get(pending))
        if not all(np.isfinite(v) for v in means.values()):
          logging.error('non-finite metrics at step %d: %s', step, means)
        means['steps_per_sec'] = (step - steps_at_log) / max(time.time() - t_log, 1e-9)
        writer.write_scalars(step, means)
        pending, t_log, steps_at_log = [], time.time(), step
      if step % config.eval_every == 0 or step == end:
        writer.write_scalars(step, heldout_metrics(models.flow, state.ema['forward'], heldout,
                                                   config, mesh))
      if step % config.sample_every == 0 or step == end:
        path, _ = write_sample_grid(config, samplers, state.ema,
                                    workdir / 'samples' / f'step_{step}.png', to_pixels=to_pixels)
        if parallel.is_main_process():
          logging.info('wrote %s (%s)', path, ', '.join(samplers))
      if (step % config.checkpoint_every == 0 or finished) and int(state.skips) == 0:
        checkpoints.save(manager, step, state, data_iter)
      if preemption.requested:
        break

  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return state


def restore_for_inference(config, workdir: str | epath.PathLike) -> tuple[Models, TrainState, int]:
  """Models and train state from the latest checkpoint (no data iterator)."""
  config_lib.validate(config)
  plan = optim.build_phase_plan(config)
  models = build_models(config)
  tx = optim.make_optimizer(config, plan)
  abstract = abstract_state(config, models, tx, parallel.make_mesh(config.mesh))
  if not (epath.Path(workdir) / 'checkpoints').is_dir():  # say so without creating anything
    raise FileNotFoundError(f'no checkpoint in {epath.Path(workdir) / "checkpoints"}: train first '
                            '(--mode=train) or point --workdir at a run that has one')
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  try:
    state, step = checkpoints.restore(manager, abstract)
  finally:
    manager.close()
  return models, state, step


def sample_from_checkpoint(config, workdir: str | epath.PathLike, name: str | None = None) -> epath.Path:
  """`--mode=sample`: a grid (and the raw samples) from the latest checkpoint's EMA params."""
  workdir = epath.Path(workdir)
  models, state, step = restore_for_inference(config, workdir)
  models, frozen_params = load_frozen(config, models, with_perceptual=False)
  s = config.sample
  w = decoder_guidance(config, s.decoder)
  name = name or f'{s.decoder}_w{w:g}_t{s.temperature:g}_step{step}'
  path, outputs = write_sample_grid(config, make_samplers(config, (s.decoder,)), state.ema,
                                    workdir / 'samples' / f'{name}.png',
                                    to_pixels=pixel_decoder(models, frozen_params))
  if parallel.is_main_process():
    with (workdir / 'samples' / f'{name}.npz').open('wb') as f:
      np.savez(f, images=images.to_uint8(outputs[s.decoder]),
               labels=np.asarray(sampling.class_rows(s.num, config.model.num_classes)))
  logging.info('wrote %s', path)
  return path
