"""Stress-test estimators in F's latent space z (n, days, A), model-agnostic pieces.

- `temperature_cost`: scaling z by T (the founding document's "amplified tail events")
  moves every draw off the base's typical set. Under N(0, I) in d dimensions the base
  log-density falls by (T^2 - 1) |z|^2 / 2, on average (T^2 - 1) d / 2 nats (88 nats at
  T = 1.2, d = 400): a what-if, not a probability. For another base it is measured on
  the draws (`base_density.log_density_drop`).
- Importance sampling (`mean_shift`): z = mu + e with e from the base, so
  q(z) = p(z - mu) and log w = log p(z) - log p(z - mu) (exact: the base is known).
  mu = 0 gives w = 1, i.e. plain Monte Carlo. `shift_direction` estimates a direction
  that raises the loss (the mean loss gradient over base draws; for a linear loss this is
  the exact design-point direction), and `shift_size` puts the shift at the level's
  quantile of the projection u.z under the base (Phi^{-1}(a) for the Gaussian), i.e.
  at the design point of a linear loss (Rubinstein and Kroese, "Simulation and the
  Monte Carlo method", mean-shift IS).
- Reverse stress test (`worst_scenario`): maximise a loss L(z) over the base's
  highest-density region of probability q: |z|^2 <= chi2_d(q) for the Gaussian, and
  {z: log p(z) >= l_q} with l_q the base's (1-q) quantile of log p(Z) otherwise
  (`plausible_region`) (Studer's maximum loss; Breuer et al. 2009). Projected gradient
  ascent with normalised steps from several starts; the projection is radial (exact
  for the ball; for the Student-t region a bisection on the scale along the ray, which
  stays feasible because log p(s z) decreases in s > 0).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from biflow_jax.data import market_space
from biflow_jax.models import base_density

Array = jax.Array


def portfolio_loss_fn(space: market_space.ModelSpace, weights: np.ndarray,
                      horizon: int | None = None) -> Callable[[Array], Array]:
  """A jax function u (n, days, A) model space -> (n,) buy-and-hold portfolio loss over
  the first `horizon` days (all when None): -sum_a w_a (exp(sum_t r_ta) - 1), r the raw
  log returns (`market_metrics.portfolio_losses`, differentiable in u)."""
  sqrt_lam = jnp.asarray(np.sqrt(space.eigenvalues), jnp.float32)
  basis_t = jnp.asarray(space.basis.T, jnp.float32)
  scale = jnp.asarray(space.standardizer.scale, jnp.float32)
  mean = jnp.asarray(space.standardizer.mean, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)

  def loss(u: Array) -> Array:
    r = ((u[:, :horizon] * sqrt_lam) @ basis_t) * scale + mean
    return -(jnp.expm1(jnp.sum(r, axis=1)) @ w)

  return loss


def temperature_cost(temperature: float, d: int) -> float:
  """(T^2 - 1) d / 2: the mean drop (nats) of N(0, I)'s log-density when z is scaled by T."""
  return (temperature ** 2 - 1) * d / 2


# -------------------------------------------------------------------- importance sampling


def mean_shift(rng: Array, n: int, shape: tuple[int, ...], mu: np.ndarray | None,
               base: str, nu: float) -> tuple[Array, np.ndarray]:
  """(z (n, *shape), log w (n,)) for the proposal z = mu + e, e from the base.

  log w = log p(z) - log p(z - mu): the weight that turns draws of q into draws of the
  base. mu None (or all zeros) is plain Monte Carlo: every log w is exactly 0.
  """
  e = jnp.asarray(base_density.host_sample(rng, (n, *shape), base, nu))
  if mu is None or not np.any(mu):
    return e, np.zeros(n)
  z = e + jnp.asarray(mu, jnp.float32)[None]
  log_w = base_density.log_prob(z, base, nu) - base_density.log_prob(e, base, nu)
  return z, np.asarray(log_w, np.float64)


def shift_direction(grad_fn: Callable[[Array], Array], z: Array) -> np.ndarray:
  """Unit direction (shape of one z) of the mean of grad_fn(z) over the draws z (n, ...)."""
  g = np.asarray(grad_fn(z), np.float64).mean(axis=0)
  norm = np.linalg.norm(g)
  if not norm > 0:
    raise ValueError('the loss gradient is 0 at every draw: no direction raises the loss')
  return g / norm


def shift_size(direction: np.ndarray, level: float, base: str, nu: float, rng: Array,
               n: int = 100_000) -> float:
  """The level-quantile of u.z under the base (u = direction): Phi^{-1}(level) for N(0, I),
  by Monte Carlo of n draws otherwise."""
  return shift_sizes(direction, (level,), base, nu, rng, n)[0]


def shift_sizes(direction: np.ndarray, levels: Sequence[float], base: str, nu: float,
                rng: Array, n: int = 100_000) -> list[float]:
  """`shift_size` at each level from one set of n draws (the same numbers as calling it per
  level with the same rng; a Student-t draw of n x d values is the expensive part)."""
  if base == 'gaussian':
    return [float(stats.norm.ppf(level)) for level in levels]
  u = jnp.asarray(direction, jnp.float32)
  proj = np.asarray(jnp.sum(jnp.asarray(base_density.host_sample(rng, (n, *direction.shape), base, nu)) * u,
                            axis=(1, 2)))
  return [float(np.quantile(proj, level)) for level in levels]


# -------------------------------------------------------------------- reverse stress test


@dataclasses.dataclass(frozen=True)
class Region:
  """The base's highest-density region of probability q.

  kind 'ball': |z|^2 <= radius2 (Gaussian); 'level': log p(z) >= log_p_min (other bases).
  """
  q: float
  d: int
  base: str
  nu: float
  kind: str
  radius2: float = math.nan
  log_p_min: float = math.nan

  def contains(self, z: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """(n,) whether each z (n, ...) lies in the region (up to a relative tol)."""
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    if self.kind == 'ball':
      return np.sum(z ** 2, axis=1) <= self.radius2 * (1 + tol)
    lp = np.asarray(base_density.log_prob(jnp.asarray(z, jnp.float32), self.base, self.nu))
    return lp >= self.log_p_min - tol * abs(self.log_p_min)

  def to_dict(self) -> dict[str, float | str]:
    out = {'q': self.q, 'd': self.d, 'base': self.base, 'kind': self.kind}
    if self.kind == 'ball':
      out.update(radius2=self.radius2, radius=math.sqrt(self.radius2),
                 typical_radius=math.sqrt(self.d))
    else:
      out.update(nu=self.nu, log_p_min=self.log_p_min)
    return out


def plausible_region(q: float, d: int, base: str, nu: float, rng: Array,
                     n: int = 200_000) -> Region:
  """The base's q-HDR in d dimensions: chi2_d(q) for the Gaussian, else by n base draws."""
  if not 0 < q < 1:
    raise ValueError(f'the plausibility quantile q must be in (0, 1), got {q}')
  if base == 'gaussian':
    return Region(q, d, base, nu, 'ball', radius2=float(stats.chi2.ppf(q, d)))
  lp = np.asarray(base_density.log_prob(base_density.host_sample(rng, (n, d), base, nu), base, nu))
  return Region(q, d, base, nu, 'level', log_p_min=float(np.quantile(lp, 1 - q)))


def project(z: Array, region: Region, iters: int = 40) -> Array:
  """Radial projection of z (n, ...) into the region (points inside are unchanged)."""
  flat = z.reshape(z.shape[0], -1)
  if region.kind == 'ball':
    norm = jnp.sqrt(jnp.sum(flat ** 2, axis=1))
    scale = jnp.minimum(1.0, math.sqrt(region.radius2) / jnp.maximum(norm, 1e-12))
    return z * scale.reshape((-1,) + (1,) * (z.ndim - 1))

  def log_p(s):
    return base_density.log_prob(flat * s[:, None], region.base, region.nu)

  lo = jnp.zeros(flat.shape[0])
  hi = jnp.ones(flat.shape[0])
  inside = log_p(hi) >= region.log_p_min
  for _ in range(iters):  # bisection: log p(s z) is decreasing in s > 0
    mid = (lo + hi) / 2
    ok = log_p(mid) >= region.log_p_min
    lo, hi = jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)
  scale = jnp.where(inside, 1.0, lo)
  return z * scale.reshape((-1,) + (1,) * (z.ndim - 1))


def worst_scenario(loss_fn: Callable[[Array], Array], z0: Array, region: Region,
                   steps: int = 300, lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Maximises loss_fn (z (k, ...) -> (k,), differentiable) over the region from k starts.

  Each step moves every start by lr * sqrt(d) along its normalised gradient (lr decays
  linearly to 0) and projects back into the region. Returns (z (k, ...), loss (k,)) of
  every start's best feasible iterate, float64.
  """
  grad = jax.jit(jax.grad(lambda z: jnp.sum(loss_fn(z))))
  loss_jit = jax.jit(loss_fn)
  size = math.sqrt(region.d)
  z = project(jnp.asarray(z0, jnp.float32), region)
  best_z, best = np.asarray(z, np.float64), np.asarray(loss_jit(z), np.float64)
  for i in range(steps):
    g = grad(z)
    norm = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
    g = g / jnp.maximum(norm, 1e-12).reshape((-1,) + (1,) * (g.ndim - 1))
    z = project(z + lr * size * (1 - i / steps) * g, region)
    value = np.asarray(loss_jit(z), np.float64)
    better = value > best
    best = np.where(better, value, best)
    best_z[better] = np.asarray(z, np.float64)[better]
  return best_z, best
