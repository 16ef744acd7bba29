"""Value-at-Risk and Expected Shortfall from loss samples, plain or importance-weighted.

Losses are positive when money is lost (e.g. -portfolio return). With sample losses L_i
and probabilities p_i (1/n for plain Monte Carlo),

  S(l)   = sum_i p_i 1{L_i > l}                        (tail probability)
  VaR_a  = min{L_i : S(L_i) <= 1 - a}                  (lower a-quantile of the losses)
  ES_a   = VaR_a + sum_i p_i (L_i - VaR_a)^+ / (1 - a)  (Rockafellar and Uryasev 2002)

With p_i = 1/n this equals the Acerbi and Tasche (2002) estimator
ES = [ (1/n) sum_{L_i > VaR} L_i + VaR (F_n(VaR) - a) ] / (1 - a), which is coherent
and uses the fractional atom at VaR (not the mean of the worst ceil(n(1-a)) losses).

Importance sampling (model-agnostic: samples drawn from q, target p, log-weights
log w_i = log p(x_i) - log q(x_i)):
  self-normalised: p_i = w_i / sum_j w_j (needs densities only up to constants; biased,
    consistent);
  plain:           p_i = w_i / n (needs normalised densities; S(l) unbiased).
Effective sample size (Kong 1992): ESS = (sum w)^2 / sum w^2, in [1, n].
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from biflow_jax.evaluation import block_bootstrap


def _probabilities(n: int, log_weights: np.ndarray | None, self_normalised: bool) -> np.ndarray:
  if log_weights is None:
    return np.full(n, 1.0 / n)
  lw = np.asarray(log_weights, np.float64)
  if lw.shape != (n,):
    raise ValueError(f'log_weights must have shape ({n},), got {lw.shape}')
  if np.any(np.isnan(lw)) or np.any(lw == np.inf):
    raise ValueError('log_weights must be finite or -inf')
  if self_normalised:
    return np.exp(lw - logsumexp(lw))
  return np.exp(lw - np.log(n))


def _check(losses: np.ndarray, alpha: float) -> np.ndarray:
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 1 or losses.size == 0:
    raise ValueError(f'losses must be a non-empty 1-D array, got shape {losses.shape}')
  if not np.all(np.isfinite(losses)):
    raise ValueError(f'{int(np.sum(~np.isfinite(losses)))} non-finite losses')
  if not 0 < alpha < 1:
    raise ValueError(f'alpha must be in (0, 1), got {alpha}')
  return losses


def var_es(losses: np.ndarray, alpha: float, log_weights: np.ndarray | None = None,
           self_normalised: bool = True) -> tuple[float, float]:
  """(VaR_alpha, ES_alpha) of losses (n,), plain or importance-weighted (module doc).

  alpha: confidence level, e.g. 0.99. Units: those of the losses.
  Raises ValueError for non-finite losses, bad shapes or alpha outside (0, 1).
  """
  losses = _check(losses, alpha)
  p = _probabilities(len(losses), log_weights, self_normalised)
  order = np.argsort(losses)
  l_sorted, p_sorted = losses[order], p[order]
  cum = np.cumsum(p_sorted)
  # S(L_(k)) = mass strictly above the k-th smallest loss (tied losses share one S).
  tail = cum[-1] - cum[np.searchsorted(l_sorted, l_sorted, side='right') - 1]
  # 1e-12 absorbs rounding in the cumulative sums (S is a sum of n probabilities).
  k = int(np.argmax(tail <= 1 - alpha + 1e-12))
  var = float(l_sorted[k])
  es = var + float(np.sum(p * np.maximum(losses - var, 0.0))) / (1 - alpha)
  return var, es


def tail_probability(losses: np.ndarray, threshold: float,
                     log_weights: np.ndarray | None = None,
                     self_normalised: bool = True) -> float:
  """P(L > threshold) estimated from losses (n,), plain or importance-weighted."""
  losses = _check(losses, 0.5)
  p = _probabilities(len(losses), log_weights, self_normalised)
  return float(np.sum(p[losses > threshold]))


def effective_sample_size(log_weights: np.ndarray) -> float:
  """Kong's ESS (sum w)^2 / sum w^2 from log-weights (n,), computed in log space."""
  lw = np.asarray(log_weights, np.float64)
  return float(np.exp(2 * logsumexp(lw) - logsumexp(2 * lw)))


def var_es_interval(losses: np.ndarray, alpha: float, groups: np.ndarray | None = None,
                    n_boot: int = 500, level: float = 0.9, seed: int = 0) -> dict[str, dict]:
  """VaR and ES with percentile bootstrap intervals over `groups` (years) of the losses.

  groups: (n,) labels resampled as blocks (None: each loss its own block, the iid
  bootstrap). Returns {'var': {...}, 'es': {...}} as `block_bootstrap.interval`.
  """
  losses = _check(losses, alpha)
  groups = np.arange(len(losses)) if groups is None else np.asarray(groups)
  stat = lambda i: np.array(var_es(losses[i], alpha))
  both = block_bootstrap.interval(stat, groups, n_boot, level, seed)
  pick = lambda j: {k: (v[j] if isinstance(v, list) else v) for k, v in both.items()}
  return {'var': pick(0), 'es': pick(1)}
