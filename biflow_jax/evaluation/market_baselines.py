"""Scenario generators that a market model has to beat, fitted on training days only.

Each returns scenarios (n, days, A) of daily log returns, like a model's samples:

  iid_gaussian       every day iid N(mean, cov) with the training mean and covariance:
                     right correlations, no fat tails, no volatility clustering.
  day_bootstrap      every day an independently drawn training day (all assets of that
                     day together): real fat tails and cross-section, no clustering.
  window_bootstrap   whole training windows drawn at random: a perfect memoriser,
                     the reference for the nearest-neighbour (memorisation) metric.
  ccc_garch_t        per-asset GARCH(1,1) with standardised Student-t innovations
                     (Bollerslev 1986, 1987) and constant conditional correlation
                     (Bollerslev 1990) through a Gaussian copula of the innovations.

The GARCH fit uses the `arch` package on the concatenated training days (the held-out
years removed; the few joins between training segments are treated as consecutive days).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special, stats

from biflow_jax.data import market


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _train_returns(train_returns: np.ndarray) -> np.ndarray:
  r = np.asarray(train_returns, np.float64)
  if r.ndim != 2 or len(r) < 2 or not np.all(np.isfinite(r)):
    raise ValueError(f'training returns must be finite (T, A) with T >= 2, got {r.shape}')
  return r


def iid_gaussian(train_returns: np.ndarray, n: int, days: int,
                 seed: int | np.random.Generator = 0) -> np.ndarray:
  """(n, days, A) iid days from N(training mean, training covariance (ddof 1))."""
  r = _train_returns(train_returns)
  rng = _rng(seed)
  return rng.multivariate_normal(r.mean(axis=0), np.cov(r, rowvar=False),
                                 size=(n, days), method='cholesky')


def day_bootstrap(train_returns: np.ndarray, n: int, days: int,
                  seed: int | np.random.Generator = 0) -> np.ndarray:
  """(n, days, A) days drawn with replacement from the training days (T, A)."""
  r = _train_returns(train_returns)
  return r[_rng(seed).integers(0, len(r), (n, days))]


def window_bootstrap(train_windows: np.ndarray, n: int,
                     seed: int | np.random.Generator = 0) -> np.ndarray:
  """(n, days, A) training windows (m, days, A) drawn with replacement."""
  w = np.asarray(train_windows, np.float64)
  return w[_rng(seed).integers(0, len(w), n)]


@dataclasses.dataclass(frozen=True)
class CCCGarchT:
  """Fitted CCC-GARCH(1,1)-t, parameters in percent log-return units (arch's scaling).

  mu, omega, alpha, beta, nu: (A,) per asset; corr (A, A) correlation of the Gaussian
  copula (normal scores of the t-PIT of the standardised residuals); sigma2_next (T, A)
  the one-step-ahead conditional variance after each training day, the states from which
  simulated windows start; converged (A,) arch's optimiser flag per asset. arch keeps
  alpha + beta <= 1; on short samples a fit can sit at 1 (integrated GARCH), harmless
  over a 20-day window that starts from a fitted state.
  """
  mu: np.ndarray
  omega: np.ndarray
  alpha: np.ndarray
  beta: np.ndarray
  nu: np.ndarray
  corr: np.ndarray
  sigma2_next: np.ndarray
  converged: np.ndarray

  def to_dict(self) -> dict[str, list]:
    return {k: getattr(self, k).tolist()
            for k in ('mu', 'omega', 'alpha', 'beta', 'nu', 'converged')}


def fit_ccc_garch_t(train_returns: np.ndarray) -> CCCGarchT:
  """Fits one GARCH(1,1)-t per asset with `arch` and the copula correlation."""
  # arch (and its pandas/statsmodels dependencies) is imported here so that the data,
  # metrics and report modules work without it; only this baseline needs it.
  from arch import arch_model
  r = _train_returns(train_returns) * 100  # arch's optimiser expects percent scale
  params = {k: [] for k in ('mu', 'omega', 'alpha', 'beta', 'nu')}
  scores, sigma2_next, converged = [], [], []
  for j in range(r.shape[1]):
    res = arch_model(r[:, j], mean='Constant', vol='GARCH', p=1, q=1,
                     dist='t').fit(disp='off')
    p = res.params
    converged.append(res.convergence_flag == 0)
    mu, omega, alpha, beta, nu = (float(p['mu']), float(p['omega']), float(p['alpha[1]']),
                                  float(p['beta[1]']), float(p['nu']))
    for k, v in zip(params, (mu, omega, alpha, beta, nu)):
      params[k].append(v)
    sig = np.asarray(res.conditional_volatility)
    eps = r[:, j] - mu
    sigma2_next.append(omega + alpha * eps ** 2 + beta * sig ** 2)
    # Standardised residual e has unit variance; e * sqrt(nu / (nu - 2)) is t_nu.
    u = stats.t.cdf(eps / sig * np.sqrt(nu / (nu - 2)), nu)
    scores.append(special.ndtri(np.clip(u, 1e-12, 1 - 1e-12)))
  return CCCGarchT(*(np.array(params[k]) for k in params),
                   corr=np.corrcoef(np.array(scores)), sigma2_next=np.array(sigma2_next).T,
                   converged=np.array(converged))


def simulate_ccc_garch_t(model: CCCGarchT, n: int, days: int,
                         seed: int | np.random.Generator = 0) -> np.ndarray:
  """(n, days, A) windows; each starts from the conditional variances after a uniformly
  drawn training day (all assets of that day), so windows cover the fitted model's
  range of volatility regimes without a burn-in."""
  rng = _rng(seed)
  chol = np.linalg.cholesky(model.corr)
  a = len(model.mu)
  sigma2 = model.sigma2_next[rng.integers(0, len(model.sigma2_next), n)]
  out = np.empty((n, days, a))
  unit = np.sqrt((model.nu - 2) / model.nu)
  for t in range(days):
    g = rng.standard_normal((n, a)) @ chol.T
    e = special.stdtrit(model.nu, special.ndtr(g)) * unit
    eps = np.sqrt(sigma2) * e
    out[:, t] = model.mu + eps
    sigma2 = model.omega + model.alpha * eps ** 2 + model.beta * sigma2
  return out / 100


def ccc_garch_t(train_returns: np.ndarray, n: int, days: int,
                seed: int | np.random.Generator = 0) -> np.ndarray:
  """Fits `fit_ccc_garch_t` on training days (T, A) and simulates (n, days, A)."""
  return simulate_ccc_garch_t(fit_ccc_garch_t(train_returns), n, days, seed)


def all_baselines(dataset: market.MarketDataset, n: int, seed: int = 0,
                  garch: bool = True) -> dict[str, np.ndarray]:
  """name -> (n, days, A) for every baseline above, fitted on the dataset's training days."""
  r = dataset.returns.values[dataset.train_days]
  rng = np.random.default_rng(seed)
  out = {'iid_gaussian': iid_gaussian(r, n, dataset.days, rng),
         'day_bootstrap': day_bootstrap(r, n, dataset.days, rng),
         'window_bootstrap': window_bootstrap(dataset.train.x, n, rng)}
  if garch:
    out['ccc_garch_t'] = ccc_garch_t(r, n, dataset.days, rng)
  return out
