"""Jitted samplers and densities for market windows, all in model space (no clipping).

Shapes: z and model-space windows u are tokens (n, days, A): one token per day (F's
input is (n, days, 1, A) with 1x1 patches, `to_image` / `to_tokens`). Labels (n,) are
volatility-regime bins, -1 = no label (F: the mean class embedding; G: its null row).

- `MarketSamplers.generate(params, z, labels)`: G(z | y) in one pass (1 NFE), guidance 0.
- `MarketSamplers.exact(params, z, labels)`: F's exact inverse (days x blocks serial steps),
  which lands on x~ = x + sigma * eps; with `denoise='score'` Tweedie's step cleans it.
- `MarketSamplers.log_prob(forward_params, u, labels)`: log p_F(u | y) in nats per window
  under F's own base density, at u itself (no noise added): a proper density of
  model-space windows, so held-out windows can be scored with it.
- `MarketSamplers.encode(forward_params, u, labels)`: z = F(u | y).
- `noise(rng, n, temperature)`: z drawn from F's base (`base_density.host_sample`: numpy on the host).

Unlike `sampling.make_decoder` nothing is clipped to [-1, 1]: returns are not pixels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax.models import base_density
from biflow_jax.models.flow import ForwardFlow, base_nll, score_denoise
from biflow_jax.models.generator import ReverseModel

Array = jax.Array


def to_image(tokens: Array) -> Array:
  """(n, days, A) tokens -> F's NHWC input (n, days, 1, A)."""
  return tokens[:, :, None, :]


def to_tokens(image: Array) -> Array:
  """(n, days, 1, A) -> (n, days, A)."""
  return image[:, :, 0, :]


@dataclasses.dataclass(frozen=True)
class MarketSamplers:
  """The jitted functions of one market config (module doc)."""
  flow: ForwardFlow
  generator: ReverseModel | None
  sigma: float
  generate: Callable[..., Array] | None
  exact: Callable[..., Array]
  log_prob: Callable[..., Array]
  encode: Callable[..., Array]

  @property
  def shape(self) -> tuple[int, int]:
    """(days, A) of one window."""
    return self.flow.num_tokens, self.flow.token_dim

  def noise(self, rng: Array, n: int, temperature: float = 1.0) -> Array:
    """(n, days, A) draws of F's base density, times `temperature` (drawn on the host:
    `base_density.host_sample`)."""
    return jnp.asarray(base_density.host_sample(rng, (n, *self.shape), self.flow.base,
                                                self.flow.nu, temperature))

  def base_log_prob(self, z: Array) -> Array:
    """(n,) base log-density of z (nats)."""
    return base_density.log_prob(z, self.flow.base, self.flow.nu)


def _labels(flow: ForwardFlow, labels: Array) -> Array | None:
  return labels if flow.num_classes else None


def make(config, denoise: str = 'none') -> MarketSamplers:
  """The samplers of a market config (G's only when config.reverse.enabled)."""
  flow = ForwardFlow.from_config(config.model)
  generator = (ReverseModel.from_config(config.reverse, config.model)
               if config.reverse.enabled else None)
  sigma = float(config.objective.noise_sigma)
  if denoise not in ('none', 'score'):
    raise ValueError(f"denoise must be 'none' or 'score', got {denoise!r}")

  def generate(params, z, labels):
    w = jnp.zeros((z.shape[0],), jnp.float32)
    out, _ = generator.apply({'params': params['reverse']}, z, _labels(flow, labels), w)
    return out.astype(jnp.float32)

  def exact(params, z, labels):
    variables = {'params': params['forward']}
    y = _labels(flow, labels)
    x = flow.apply(variables, z, y, method=ForwardFlow.inverse)
    if denoise == 'score':
      x = score_denoise(flow, variables, x, y, sigma)
    return to_tokens(x)

  def log_prob(forward_params, u, labels):
    z, logdet, _ = flow.apply({'params': forward_params}, to_image(u), _labels(flow, labels))
    return -base_nll(flow, z, logdet)

  def encode(forward_params, u, labels):
    z, _, _ = flow.apply({'params': forward_params}, to_image(u), _labels(flow, labels))
    return z

  return MarketSamplers(flow, generator, sigma, jax.jit(generate) if generator else None,
                        jax.jit(exact), jax.jit(log_prob), jax.jit(encode))


def in_batches(fn: Callable[..., Array], *arrays: np.ndarray, batch: int = 1000) -> np.ndarray:
  """fn applied to consecutive batches of the arrays' first axis, results concatenated
  on the host (float64). The last batch is padded to `batch` (one compilation) and cut."""
  n = len(arrays[0])
  out = []
  for s in range(0, n, batch):
    part = [np.asarray(a[s:s + batch]) for a in arrays]
    k = len(part[0])
    if k < batch:
      part = [np.concatenate([p, np.repeat(p[-1:], batch - k, axis=0)]) for p in part]
    out.append(np.asarray(fn(*part), np.float64)[:k])
  return np.concatenate(out) if out else np.zeros((0,))
