"""BiFlow's objective in one place: `loss_fn(params, batch, rng, *, phase, ...) -> (loss, metrics)`.

    L = w_nll(phase) * L_NLL(F) + w_rev(phase) * L_reverse(G)          (docs/method.md §5)

Reading order:
1. Inputs (`prepare_inputs`): x from uint8 pixels in [-1, 1], or a fresh draw from a
   cached VAE posterior (`sample_latents`); x~ = x + sigma * eps; labels dropped to the
   null label -1 with probability p (so one G and one F also serve unconditionally).
2. The NLL term: F maps x~ to (z, log|det|, trajectory); `flow.base_nll` (the Gaussian
   `primitives.gaussian_nll`, or F's Student-t base).
3. The reverse term (`reverse_objective`), one of:
   - trajectory supervision (`reverse_loss`): G maps sg(z) back; its end point is
     pulled to x (learned denoising) or x~, and with 'align' / 'hidden' every stage's
     projection to the matching state of F's trajectory; optional perceptual terms on
     decoded images (`perceptual_terms`, LPIPS / ConvNeXt through the frozen VAE
     decoder);
   - inverse matching on fresh noise: G(z) against sg(F^-1(z)) by F's fixed-point
     inverse (`inverse_matching_target`);
   with training-time CFG (`generator_outputs`) the supervised quantity is the
   combination (G(z|c,w) + w G(z|null,w)) / (1 + w), w ~ U[0, w_max).
4. Phase weighting: the phase (phases.Phase) says which groups train and each term's
   weight; a frozen F is stop-gradient.

Distances, adaptive/token weights and the CFG combination are the primitives of
`primitives.py`. Everything here is pure and jit-able; nothing imports data or I/O code.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from biflow_jax.models import base_density, layers
from biflow_jax.models.flow import ForwardFlow, base_nll, score_denoise
from biflow_jax.models.generator import ReverseModel
from biflow_jax.objective import frozen, phases, primitives

Array = jax.Array

#: What G is supervised with: F's paired trajectory, or F^-1 of fresh noise.
REVERSE_TARGETS = ('trajectory', 'inverse_matching')
#: Trajectory supervision: hidden alignment, hidden distillation, naive distillation.
REVERSE_MODES = ('align', 'hidden', 'naive')
#: How samples get clean: G learns it, F's score at sampling time, or not at all.
DENOISE_MODES = ('learned', 'score', 'none')
#: Which F G learns to invert (objective.reverse_teacher): F's trained parameters, or their
#: EMA, the F that sampling and the exact inverse use.
REVERSE_TEACHERS = ('params', 'ema')
#: Clean targets of prior rows (objective.prior_denoise): Tweedie's step with F's score,
#: or F^-1(z) itself.
PRIOR_DENOISE = ('score', 'none')
#: End target of data rows under learned denoising (objective.denoise_target): the clean x
#: the noisy input was made from, or F's own posterior mean of x~ (Tweedie with F's score).
DENOISE_TARGETS = ('clean', 'score')


class Models(NamedTuple):
  """The networks of one experiment (static: closed over by jitted functions)."""
  flow: ForwardFlow
  generator: ReverseModel | None = None  # None while config.reverse.enabled is False
  frozen: frozen.FrozenNets | None = None  # VAE decoder, perceptual nets when the config uses them


# ------------------------------------------------------------------------------ inputs

def sample_latents(mean: Array, std: Array, rng: Array, scaling_factor: float) -> Array:
  """A posterior sample in the space F and G see: (mean + std * eps) * scaling_factor."""
  eps = jax.random.normal(rng, jnp.shape(mean), jnp.float32)
  return (jnp.asarray(mean, jnp.float32) + jnp.asarray(std, jnp.float32) * eps) * scaling_factor


def noisy_inputs(batch: dict, rng: Array, sigma: float, drop_prob: float, num_classes: int,
                 scaling_factor: float = 1.0) -> tuple[Array, Array, Array | None]:
  """Batch -> (x, x~ = x + sigma * eps, labels dropped to -1 w.p. drop_prob), NHWC float32.

  `batch` holds uint8 'image' (mapped to [-1, 1]), 'latent_mean'/'latent_std' from the
  latent cache (a fresh posterior draw, times `scaling_factor`), or float 'values' already
  in model space (market windows), used as x as they are; and int 'label'.
  Labels are None for an unconditional model (num_classes=0).
  """
  noise_rng, drop_rng, latent_rng = jax.random.split(rng, 3)
  if 'latent_mean' in batch:
    x = sample_latents(batch['latent_mean'], batch['latent_std'], latent_rng,
                       scaling_factor).astype(jnp.float32)
  elif 'values' in batch:
    x = jnp.asarray(batch['values'], jnp.float32)
  else:
    x = primitives.from_uint8(batch['image'])
  x_noisy = x + sigma * jax.random.normal(noise_rng, x.shape)
  if not num_classes:
    return x, x_noisy, None
  y = batch['label'].astype(jnp.int32)
  if drop_prob > 0:
    drop = jax.random.uniform(drop_rng, y.shape) < drop_prob
    y = jnp.where(drop, -1, y)
  return x, x_noisy, y


def prepare_inputs(batch: dict, rng: Array, config, num_classes: int, train: bool):
  """`noisy_inputs` with the config's sigma, label-drop probability (training only) and
  VAE scaling factor."""
  drop_prob = config.objective.label_drop_prob if train else 0.0
  return noisy_inputs(batch, rng, config.objective.noise_sigma, drop_prob, num_classes,
                      float(config.vae.scaling_factor))


def prior_rows(batch_size: int, config) -> int:
  """Rows of each batch that objective.prior_fraction gives to prior pairs (0 = off)."""
  fraction = float(config.objective.get('prior_fraction', 0.0) or 0.0)
  return int(round(fraction * batch_size)) if fraction > 0 else 0


def prior_pairs(flow: ForwardFlow, forward_params, z: Array, y, config) -> tuple[Array, Array]:
  """(x~, x) of fresh prior noise: x~ = F^-1(z | y) by the exact inverse, x its clean target
  (Tweedie's step with F's score, objective.prior_denoise='score', or x~ itself); both
  NHWC and stop-gradient. z: (k, T, D) tokens; y: (k,) labels or None."""
  variables = {'params': jax.lax.stop_gradient(forward_params)}
  x_noisy = flow.apply(variables, z, y, method=ForwardFlow.inverse)
  x_clean = x_noisy
  if config.objective.get('prior_denoise', 'score') == 'score':
    x_clean = score_denoise(flow, variables, x_noisy, y, float(config.objective.noise_sigma))
  return jax.lax.stop_gradient(x_noisy), jax.lax.stop_gradient(x_clean)


def with_prior_rows(flow: ForwardFlow, forward_params, x_clean: Array, x_noisy: Array, y,
                    rng: Array, config) -> tuple[Array, Array]:
  """The batch with its last k rows (`prior_rows`) replaced by prior pairs of the same
  labels: G then learns F's inverse where prior noise lands too, not only at F's
  latents of real data (docs/method.md §4.13). Shapes (and shardings) are unchanged."""
  k = prior_rows(x_clean.shape[0], config)
  if k == 0:
    return x_clean, x_noisy
  z = base_density.sample(rng, (k, flow.num_tokens, flow.token_dim), flow.base, flow.nu)
  prior_noisy, prior_clean = prior_pairs(flow, forward_params, z, None if y is None else y[-k:],
                                         config)
  return x_clean.at[-k:].set(prior_clean), x_noisy.at[-k:].set(prior_noisy)


def data_denoise_targets(flow: ForwardFlow, teacher_params, x_clean: Array, x_noisy: Array, y,
                         num_prior_rows: int, config) -> Array:
  """End targets (NHWC, stop-gradient) of learned denoising for a G batch.

  objective.denoise_target='clean' returns x_clean: G's denoise stage learns x~ -> x, whose
  least-squares solution is E[x | x~] under the training set (a few thousand digits at
  MNIST's size, where that posterior is close to the nearest training digit). 'score' gives
  the data rows (all but the last `num_prior_rows`, whose targets `prior_pairs` made) F's
  posterior mean instead, Tweedie's step x~ + sigma^2 grad log p_F(x~ | y) with the teacher
  F: the denoiser that F's exact inverse uses at sampling (§2.6), a smooth density's rather
  than the training set's. Cost: one gradient of F's log-density per G step."""
  if config.objective.get('denoise_target', 'clean') == 'clean':
    return x_clean
  variables = {'params': jax.lax.stop_gradient(teacher_params)}
  tweedie = jax.lax.stop_gradient(
      score_denoise(flow, variables, x_noisy, y, float(config.objective.noise_sigma)))
  if num_prior_rows == 0:
    return tweedie
  return x_clean.at[:-num_prior_rows].set(tweedie[:-num_prior_rows])


# ------------------------------------------------------------------------ reverse term

def generator_outputs(generator: ReverseModel, params, z: Array, y, w: Array, use_cfg: bool,
                      guided_rows: int | None = None):
  """G's (output, projections); with training-time CFG the combination
  (G(z|c,w) + w G(z|null,w)) / (1 + w) is what gets supervised (docs/method.md §4.6).

  guided_rows: with CFG, only the first guided_rows rows may have w > 0 (the caller zeroes
  the rest); the unconditional pass runs on those rows alone. At w = 0 the combination is
  the conditional output exactly, so the result equals the full two-pass one."""
  out, projections = generator.apply({'params': params}, z, y, w)
  if not use_cfg:
    return out, projections
  k = z.shape[0] if guided_rows is None else guided_rows
  null = None if y is None else jnp.full_like(y[:k], -1)
  out_u, projections_u = generator.apply({'params': params}, z[:k], null, w[:k])

  def combine(c, u):
    guided = primitives.cfg_combine(c[:k], u, w[:k])
    return guided if k == c.shape[0] else jnp.concatenate([guided, c[k:]], axis=0)

  return combine(out, out_u), [combine(c, u) for c, u in zip(projections, projections_u)]


def cfg_guided_rows(batch: int, config) -> int:
  """Rows of a G batch that training-time CFG may guide (objective.cfg_guided_fraction)."""
  fraction = float(config.objective.get('cfg_guided_fraction', 1.0))
  return batch if fraction >= 1 else max(1, int(round(fraction * batch)))


def inverse_matching_target(flow: ForwardFlow, forward_params, z: Array, y, config) -> Array:
  """sg(F^-1(z)) as tokens (batch, T, D), by the fixed-point inverse (tolerance and sweeps
  from config.objective)."""
  obj = config.objective
  x, _, _ = flow.apply({'params': jax.lax.stop_gradient(forward_params)}, z, y,
                       method=ForwardFlow.inverse, mode='fixed_point', tol=obj.inverse_tol,
                       max_iters=obj.inverse_max_iters or None, num_groups=obj.inverse_groups)
  return jax.lax.stop_gradient(layers.patchify(x, flow.patch_size))


def perceptual_terms(nets: frozen.FrozenNets | None, params: dict, patch_size: int,
                     image_shape: tuple[int, int, int]):
  """(decode, terms) for `reverse_loss`: decode maps G's tokens to RGB images once (through
  the frozen VAE decoder for latents), each term compares decoded output and target with
  its frozen net. (None, ()) when the config has no perceptual term."""
  if nets is None or not nets.terms:
    return None, ()

  def decode(tokens: Array) -> Array:
    x = layers.unpatchify(tokens, image_shape, patch_size)
    return frozen.rgb(frozen.to_images(nets, params, x).astype(jnp.float32))

  terms = tuple((name, _bind(distance, params['perceptual'][name]), weight)
                for name, weight, distance in nets.terms)
  return decode, terms


def _bind(distance, term_params):
  return lambda image, target: distance(term_params, image, target)


def reverse_loss(output: Array, projections, clean, trajectory, *, mode: str = 'align',
                 norm_control: bool = True, adaptive_p: float = 0.0, eps: float = 1e-3,
                 denoise: str = 'learned', token_weighting: bool = False,
                 perceptual_terms=(), perceptual_decode=None) -> tuple[Array, dict]:
  """Loss that trains G from F's trajectory (docs/method.md §4) -> (scalar, metrics).

  Terms (each a per-sample distance D, adaptively weighted per sample with
  `adaptive_p`/`eps`, then averaged over the batch; the loss is their sum):
    - end point: D(output, end_target). end_target is `clean` (x) with
      denoise='learned', else x~ = trajectory[0] ('none' / 'score': G learns only
      F^-1, any denoising happens at sampling time).
    - mode 'align' (BiFlow hidden alignment) and 'hidden' (hidden distillation) add
      sum_j D(projections[j], x^{B-1-j}); they differ only in G's heads. 'naive'
      uses the end point alone and ignores `projections` (may be None).
      With denoise != 'learned' the x^0 projection would duplicate the end point
      (phi_0 = identity on the output), so it is dropped: projections may have
      length B (the last one is ignored) or B - 1.
    - perceptual_terms: (name, fn, weight) with fn(image, target_image) -> (batch,);
      each is adaptively weighted, scaled by weight and added to the end point. The
      images are perceptual_decode(output) and sg(perceptual_decode(end_target)),
      decoded once for all terms (e.g. unpatchify + the frozen VAE decoder, through
      which the gradient reaches G); without a decode they are output and end_target.
  D is MSE, on states divided by the target's RMS when norm_control (every depth,
  the end point included, on the same scale), token-weighted when token_weighting.
  All targets are stop-gradient. Metrics: the raw (unweighted) batch-mean distance of
  every term ('reverse/align_j' for projections[j], 'reverse/out', 'reverse/<name>')
  and the total 'reverse/loss'.
  """
  if mode not in REVERSE_MODES:
    raise ValueError(f'unknown reverse mode {mode!r}; expected one of {REVERSE_MODES}')
  if denoise not in DENOISE_MODES:
    raise ValueError(f'unknown denoise mode {denoise!r}; expected one of {DENOISE_MODES}')
  trajectory = [jax.lax.stop_gradient(jnp.asarray(x).astype(jnp.float32)) for x in trajectory]
  num_blocks = len(trajectory) - 1
  if num_blocks < 0:
    raise ValueError('trajectory must hold at least x^0')
  if denoise == 'learned':
    if clean is None:
      raise ValueError("denoise='learned' needs the clean x as the end-point target")
    end_target = jax.lax.stop_gradient(jnp.asarray(clean).astype(jnp.float32))
  else:
    end_target = trajectory[0]

  dist = functools.partial(primitives.state_distance, norm_control=norm_control,
                           token_weighting=token_weighting)
  metrics = {}
  total = jnp.zeros((), jnp.float32)

  if mode != 'naive':
    projections = list(projections)
    n_used = num_blocks if denoise == 'learned' else num_blocks - 1
    allowed = (num_blocks,) if denoise == 'learned' else (num_blocks, num_blocks - 1)
    if len(projections) not in allowed:
      raise ValueError(f'expected {allowed} projections for {num_blocks} blocks '
                       f'(denoise={denoise!r}), got {len(projections)}')
    for j in range(max(n_used, 0)):
      d = dist(projections[j], trajectory[num_blocks - 1 - j])
      metrics[f'reverse/align_{j}'] = jnp.mean(d)
      total = total + jnp.mean(primitives.adaptive_weight(d, adaptive_p, eps))

  d = dist(output, end_target)
  metrics['reverse/out'] = jnp.mean(d)
  total = total + jnp.mean(primitives.adaptive_weight(d, adaptive_p, eps))
  if perceptual_terms:
    decode = perceptual_decode or (lambda tokens: tokens)
    image, target_image = decode(output), jax.lax.stop_gradient(decode(end_target))
  for name, fn, weight in perceptual_terms:
    d = jnp.asarray(fn(image, target_image)).astype(jnp.float32)
    metrics[f'reverse/{name}'] = jnp.mean(d)
    total = total + weight * jnp.mean(primitives.adaptive_weight(d, adaptive_p, eps))

  metrics['reverse/loss'] = total
  return total, metrics


def reverse_objective(models: Models, params, x_clean: Array, x_noisy: Array, y, trajectory,
                      rng: Array, config, frozen_params=None) -> tuple[Array, dict]:
  """L_reverse for G: paired trajectory supervision, or inverse matching on fresh noise."""
  flow, generator = models.flow, models.generator
  obj = config.objective
  batch = x_clean.shape[0]
  w_rng, z_rng = jax.random.split(rng)
  use_cfg = obj.cfg_w_max > 0 and flow.num_classes > 0
  w = (primitives.sample_guidance_scale(w_rng, batch, obj.cfg_w_max, obj.cfg_zero_prob)
       if use_cfg else jnp.zeros((batch,), jnp.float32))
  k = cfg_guided_rows(batch, config)
  if use_cfg and k < batch:  # the rest train at w = 0 and skip the unconditional pass
    w = w.at[k:].set(0.0)
  if obj.reverse_target == 'inverse_matching':
    z = base_density.sample(z_rng, (batch, flow.num_tokens, flow.token_dim), flow.base, flow.nu)
    target = inverse_matching_target(flow, params['forward'], z, y, config)
    out, _ = generator_outputs(generator, params['reverse'], z, y, w, use_cfg, k)
    value, metrics = primitives.inverse_matching_loss(out, target,
                                                      token_weighting=obj.token_weighting)
    return value, {**metrics, 'reverse/loss': value}
  z = jax.lax.stop_gradient(trajectory[-1])
  out, projections = generator_outputs(generator, params['reverse'], z, y, w, use_cfg, k)
  decode, terms = perceptual_terms(models.frozen, frozen_params or {}, flow.patch_size,
                                   flow.image_shape)
  return reverse_loss(
      out, projections, layers.patchify(x_clean, flow.patch_size), trajectory,
      mode=obj.reverse_mode, norm_control=obj.norm_control, adaptive_p=obj.adaptive_p,
      eps=obj.adaptive_eps, denoise=obj.denoise, token_weighting=obj.token_weighting,
      perceptual_terms=terms, perceptual_decode=decode)


# ---------------------------------------------------------------------------- the loss

def loss_fn(params, batch: dict, rng: Array, *, phase: phases.Phase, models: Models, config,
            frozen_params=None, teacher_forward=None) -> tuple[Array, dict]:
  """BiFlow's training loss of one batch -> (scalar loss, metrics).

  params: {'forward': F's, 'reverse': G's (once G exists)}. batch: host data as in
  `noisy_inputs`. rng: this step's key (split into the data noise and the reverse
  term's keys). phase: which groups train (a frozen F is stop-gradient) and the weights
  of the NLL and reverse terms. frozen_params: weights of models.frozen, never trained.
  teacher_forward: the F whose trajectories G learns from (objective.reverse_teacher='ema':
  F's EMA), None = params['forward']. In a phase that trains F it costs one more forward
  pass of F; with F frozen it replaces F's pass (the NLL metrics are then the teacher's).
  Metrics: NLL and log|det| per dimension (nats), bits/dim (pixel data), z's RMS, and the
  reverse term's own metrics.
  """
  data_rng, reverse_rng = jax.random.split(rng)
  prior_rng = jax.random.fold_in(rng, 1)  # a third stream; the first two keep their values
  flow = models.flow
  x_clean, x_noisy, y = prepare_inputs(batch, data_rng, config, flow.num_classes, train=True)
  num_dims = flow.num_dims
  nll_weight, reverse_weight = phase.weight('nll'), phase.weight('reverse')
  if phase.trains('forward'):
    forward = params['forward']
  else:
    forward = jax.lax.stop_gradient(params['forward'] if teacher_forward is None
                                    else teacher_forward)
  teacher = forward if teacher_forward is None else jax.lax.stop_gradient(teacher_forward)
  k = prior_rows(x_clean.shape[0], config) if reverse_weight > 0 else 0
  if k and not phase.trains('forward'):
    # F is frozen: one pass of F serves the metrics and G's trajectories of every row.
    x_clean, x_noisy = with_prior_rows(flow, teacher, x_clean, x_noisy, y, prior_rng, config)
  z, logdet, trajectory = flow.apply({'params': forward}, x_noisy, y)
  nll = base_nll(flow, z, logdet)
  data = nll.shape[0] - (k if not phase.trains('forward') else 0)  # prior rows are not data
  nll_per_dim = jnp.mean(nll[:data]) / num_dims
  metrics = dict(nll_per_dim=nll_per_dim, logdet_per_dim=jnp.mean(logdet[:data]) / num_dims,
                 z_rms=jnp.sqrt(jnp.mean(jnp.square(z[:data]))))
  if not frozen.uses_latents(config) and 'values' not in batch:  # 8-bit bins: pixels only
    metrics['bits_per_dim'] = jnp.mean(primitives.bits_per_dim(nll[:data], num_dims))
  loss = nll_weight * nll_per_dim
  if reverse_weight > 0:
    uses_trajectory = config.objective.reverse_target == 'trajectory'
    if phase.trains('forward') and uses_trajectory and (teacher_forward is not None or k):
      # F trains on data only; G's trajectories (of the teacher, over data and prior rows)
      # take one more pass of F. Inverse matching draws its own z and needs none.
      x_clean, x_noisy = with_prior_rows(flow, teacher, x_clean, x_noisy, y, prior_rng, config)
      _, _, trajectory = flow.apply({'params': jax.lax.stop_gradient(teacher)}, x_noisy, y)
    if config.objective.denoise == 'learned' and uses_trajectory:
      x_clean = data_denoise_targets(flow, teacher, x_clean, x_noisy, y, k, config)
    reverse_loss_value, reverse_metrics = reverse_objective(
        models, {**params, 'forward': teacher}, x_clean, x_noisy, y, trajectory, reverse_rng,
        config, frozen_params)
    loss = loss + reverse_weight * reverse_loss_value
    metrics.update(reverse_metrics)
  return loss, metrics
