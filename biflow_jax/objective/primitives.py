"""Loss primitives: NLL and bits/dim, distances, norm control, adaptive and token weights,
the CFG combination. How they are assembled into BiFlow's objective is `objective/biflow.py`.

Likelihood accounting (written once, used everywhere):

F maps the noisy image x~ (continuous, in [-1, 1] plus noise) to z with a prior
N(0, I) over its N = T * D = H * W * C dimensions. Change of variables gives the exact
negative log-density of x~ in nats:

    NLL(x~) = 0.5 * ||z||^2 + (N / 2) * log(2 * pi) - log|det dz/dx~|.

Bits per dimension translate that density into 8-bit units: 8-bit pixels k are mapped
to x = k / 127.5 - 1, so neighbouring levels lie a bin width w = 2/255 apart in
x-space, and a density p on x-space puts probability ~ p * w^N on one bin:

    bits/dim = (NLL / N - log(w)) / log(2) = (NLL / N + log(127.5)) / log(2).

With *uniform* dequantisation noise of exactly one bin this is an upper bound on the
discrete negative log-likelihood (the usual convention). With the Gaussian noise
augmentation BiFlow trains on (x~ = x + sigma * eps) it is the continuous density of x~
in the same units: comparable across runs with the same sigma, not a lossless code
length. We report it as such and always state sigma beside it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from biflow_jax.models.flow import gaussian_nll  # F's density: the NLL term of the objective

__all__ = ['from_uint8', 'gaussian_nll', 'bits_per_dim', 'mse', 'normalize_state',
           'adaptive_weight', 'token_weights', 'token_weighted_mse', 'state_distance',
           'cfg_combine', 'sample_guidance_scale', 'inverse_matching_loss']

Array = jax.Array

DEFAULT_BIN_WIDTH = 2.0 / 255.0  # x = k / 127.5 - 1 for 8-bit k


def from_uint8(pixels):
  """8-bit pixels k (any shape, e.g. NHWC) -> x = k / 127.5 - 1 in [-1, 1], float32: the
  project's pixel convention (module docstring) as the one function every layer above
  objective/ uses (data/, objective's sibling, writes it out once, in data/latents.py).

  A numpy array stays numpy (host pipelines), a jax array or tracer stays jax (jitted
  steps). The inverse, with rounding and clipping, is `runtime.images.to_uint8`.
  """
  return pixels.astype(jnp.float32) / 127.5 - 1.0


def bits_per_dim(nll: Array, num_dims: int, bin_width: float = DEFAULT_BIN_WIDTH) -> Array:
  """Nats per sample -> bits per dimension of data quantised into bins of `bin_width`."""
  return (nll / num_dims - math.log(bin_width)) / math.log(2.0)


# ==========================================================================
# Reverse side: the distances G is supervised with (docs/method.md §4).
#
# Conventions. F's trajectory is [x^0 = x~, x^1, ..., x^B = z], each (batch, T, D).
# G returns its sample `output` (batch, T, D) and `projections`, a list of B arrays
# with projections[j] aligned to x^{B-1-j} (projections[0] ~ x^{B-1}, ...,
# projections[B-1] ~ x^0 = x~). Every target taken from F (trajectory states, clean
# data, F^-1(z)) goes through stop_gradient here: the reverse loss trains G only.
# All distances and losses are float32, whatever the inputs' dtype.
# ==========================================================================


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _per_sample_mean(x: Array) -> Array:
  """Mean over every axis but the first: (batch, ...) -> (batch,)."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def mse(pred: Array, target: Array) -> Array:
  """Per-sample mean squared error over all but the batch axis -> (batch,) float32."""
  diff = _f32(pred) - _f32(target)
  return _per_sample_mean(diff * diff)


def normalize_state(state: Array, reference: Array, eps: float = 1e-6) -> Array:
  """Divides `state` per sample by stop_gradient(RMS(reference)) + eps (float32).

  Reverse-side norm control: trajectory states at different depths of F have very
  different scales, so each distance is measured in units of its target's RMS and
  every depth contributes on the same scale. Call it with the *same* reference (the
  target) for both prediction and target: dividing the prediction by its own norm
  would make the loss blind to the prediction's scale (any multiple of the right
  direction would score zero), and a norm that depends on the prediction would also
  put a gradient through the normaliser.
  """
  ref = jax.lax.stop_gradient(_f32(reference))
  rms = jnp.sqrt(_per_sample_mean(ref * ref))
  scale = rms + eps
  state = _f32(state)
  return state / scale.reshape((-1,) + (1,) * (state.ndim - 1))


def adaptive_weight(d: Array, p: float, eps: float = 1e-3) -> Array:
  """Adaptive weighting D_p = d * sg((d + eps)^-p), per sample; p = 0 gives d itself.

  The value is ~ d^(1 - p) while the gradient is (d + eps)^-p * dd: samples (terms)
  with large distance get relatively less gradient; p = 0 is plain MSE.
  """
  d = _f32(d)
  return d * jax.lax.stop_gradient((d + eps) ** (-p))


def _as_tokens(x: Array) -> Array:
  """(batch, T, ...) -> (batch, T, K); (batch, N) -> (batch, N, 1)."""
  x = _f32(x)
  if x.ndim == 1:
    return x.reshape(x.shape[0], 1, 1)
  return x.reshape(x.shape[0], x.shape[1], -1)


def token_weights(pred: Array, target: Array, eps: float = 1e-12) -> Array:
  """Detached per-token weights (batch, T), mean exactly 1 per sample.

  w_t = (e_t + eps) / (mean_t e_t + eps) with e_t the token's own squared error
  (mean over its features): tokens that are harder to reconstruct than the sample's
  average count more. eps keeps the weights at 1 when the error is zero everywhere.
  """
  diff = _as_tokens(pred) - _as_tokens(target)
  e = jax.lax.stop_gradient(jnp.mean(diff * diff, axis=2))
  return (e + eps) / (jnp.mean(e, axis=1, keepdims=True) + eps)


def token_weighted_mse(pred: Array, target: Array, eps: float = 1e-12) -> Array:
  """Per-sample mean over tokens of token_weights * per-token squared error -> (batch,)."""
  diff = _as_tokens(pred) - _as_tokens(target)
  e = jnp.mean(diff * diff, axis=2)
  return jnp.mean(token_weights(pred, target, eps) * e, axis=1)


def state_distance(pred: Array, target: Array, *, norm_control: bool,
                    token_weighting: bool) -> Array:
  """Per-sample distance between a G estimate and a (detached) target, (batch,)."""
  target = jax.lax.stop_gradient(_f32(target))
  pred = _f32(pred)
  if norm_control:
    pred = normalize_state(pred, target)
    target = normalize_state(target, target)
  if token_weighting:
    return token_weighted_mse(pred, target)
  return mse(pred, target)


def cfg_combine(cond: Array, uncond: Array, w: Array) -> Array:
  """Training-time CFG target quantity (cond + w * uncond) / (1 + w) (docs/method.md §4.6).

  cond = G(h | c, w), uncond = G(h | null, w); w (batch,) broadcasts over the rest.
  Computed in float32, returned in the inputs' dtype; w = 0 returns cond exactly.
  """
  dtype = jnp.result_type(cond, uncond)
  w = _f32(w).reshape((-1,) + (1,) * (jnp.ndim(cond) - 1))
  out = (_f32(cond) + w * _f32(uncond)) / (1.0 + w)
  return out.astype(dtype)


def sample_guidance_scale(rng: Array, batch: int, w_max: float, zero_prob: float) -> Array:
  """Per-example guidance scales w (batch,) float32 for training G with w as input.

  w = 0 (no guidance) with probability zero_prob, else uniform in [0, w_max). G is
  trained on this whole range, so any w in [0, w_max] can be asked for at sampling
  time in one pass. Deterministic given rng.
  """
  k_zero, k_w = jax.random.split(rng)
  is_zero = jax.random.uniform(k_zero, (batch,)) < zero_prob
  w = jax.random.uniform(k_w, (batch,), jnp.float32, 0.0, w_max)
  return jnp.where(is_zero, 0.0, w).astype(jnp.float32)


def inverse_matching_loss(pred: Array, target: Array, token_weighting: bool = False
                          ) -> tuple[Array, dict]:
  """Inverse matching on fresh noise: mean_elements ||G(z) - sg(F^-1(z))||^2 (float32).

  pred, target: (batch, T, D) tokens. token_weighting: the founding description's
  importance weighting of hard-to-reconstruct regions (docs/method.md §4.10: each token's
  squared error times its detached weight, mean 1 per sample), on the same scale as the
  plain loss. Metrics: 'inverse/mse', always the unweighted element mean.
  """
  target = jax.lax.stop_gradient(_f32(target))
  diff = _f32(pred) - target
  mse_value = jnp.mean(diff * diff)
  loss = jnp.mean(token_weighted_mse(_f32(pred), target)) if token_weighting else mse_value
  return loss, {'inverse/mse': mse_value}
