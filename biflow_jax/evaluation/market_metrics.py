"""Metrics for sets of market scenarios x (n, days, A) of daily log returns.

Every metric takes raw (not standardised) log returns. "Pooled within windows" means
that lagged pairs (t, t+k) are formed inside each window only (scenario windows are not
contiguous with each other) and then pooled over windows and assets.

Stylized facts (Cont 2001, "Empirical properties of asset returns"):
  acf(x, k)        pooled lag-k autocorrelation: returns standardised per asset over the
                   whole set, mean of z[i,t,a] z[i,t+k,a] over all i, t < days-k, a.
  acf(x, k, True)  the same for |r| (|r| standardised per asset): volatility clustering.
  kurtosis         (A,) Fisher excess kurtosis m4/m2^2 - 3 of each asset's pooled
                   returns (biased moment estimator); the report uses its median.
  leverage(x, k)   Pearson correlation of the pooled pairs (z[i,t,a], z[i,t+k,a]^2).
  corr_matrix      (A, A) Pearson correlation of pooled daily returns; mean_pairwise_corr
                   is the mean of its off-diagonal entries.
  window_vol       (n,) mean over assets of sqrt(mean over days of r^2) (uncentred);
                   cv_window_vol = std / mean over windows (ddof 0): volatility regimes.
Portfolio risk (units: fraction of the portfolio's value):
  portfolio_losses (n,) buy-and-hold loss over the window, -sum_a w_a (exp(sum_t r) - 1),
                   equal weights w_a = 1/A by default; VaR/ES from `tail_risk.var_es`.
Realism and memorisation:
  discriminative_score  |test accuracy - 0.5| of a logistic regression (numpy/scipy)
                   telling real from generated windows on the 8 `window_features` and
                   their squares (z-scored; the squares let it see a difference in
                   spread, e.g. of volatility regimes, not only in location), mean over 5
                   random balanced 70/30 splits (after Yoon et al. 2019's TimeGAN score,
                   with a quadratic-logistic model on fixed features instead of a GRU).
  nearest_train_distance (n,) Euclidean distance (log-return units, over days*A values)
                   from each window to its nearest training window.
Likelihood baselines (nats per dimension, D = days * A):
  iid-over-days full-covariance Gaussian and multivariate Student-t (fixed nu, fitted by
  EM, Liu and Rubin 1995) on standardised daily returns; `nll_baselines` reports them
  on standardised and raw returns (raw = standardised + mean log scale per dimension).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize, special

from biflow_jax.data import market
from biflow_jax.evaluation import block_bootstrap, tail_risk

FEATURE_NAMES = ('log_window_vol', 'ew_return', 'mean_corr', 'vol_trend', 'tail_ratio',
                 'ew_skew', 'ew_acf1', 'abs_acf1')


def check_scenarios(x: np.ndarray, days: int | None = None,
                    assets: int | None = None) -> np.ndarray:
  """x as float64 (n, days, A); ValueError for another rank or a shape mismatch."""
  x = np.asarray(x, np.float64)
  if x.ndim != 3:
    raise ValueError(f'scenarios must be (n, days, assets), got shape {x.shape}')
  if days is not None and x.shape[1] != days or assets is not None and x.shape[2] != assets:
    raise ValueError(f'scenarios have shape {x.shape}, expected (n, {days}, {assets})')
  if x.shape[0] < 2 or x.shape[1] < 2:
    raise ValueError(f'need at least 2 windows of at least 2 days, got {x.shape}')
  return x


def _standardise(y: np.ndarray) -> np.ndarray:
  mean = y.mean(axis=(0, 1))
  std = y.std(axis=(0, 1))
  return (y - mean) / np.where(std > 0, std, np.nan)


def acf(x: np.ndarray, lag: int, absolute: bool = False) -> float:
  """Pooled within-window lag-`lag` autocorrelation of r (or |r|), see module doc."""
  if not 1 <= lag < x.shape[1]:
    raise ValueError(f'lag must be in [1, days), got {lag}')
  z = _standardise(np.abs(x) if absolute else x)
  return float(np.mean(z[:, :-lag] * z[:, lag:]))


def acf_curve(x: np.ndarray, absolute: bool = True) -> np.ndarray:
  """(days-1,) pooled ACF at lags 1..days-1."""
  z = _standardise(np.abs(x) if absolute else x)
  return np.array([np.mean(z[:, :-k] * z[:, k:]) for k in range(1, x.shape[1])])


def leverage(x: np.ndarray, lag: int = 1) -> float:
  """Pooled corr(z_t, z_{t+lag}^2); negative = losses raise later volatility."""
  z = _standardise(x)
  u, v = z[:, :-lag].ravel(), (z[:, lag:] ** 2).ravel()
  return float(np.corrcoef(u, v)[0, 1])


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
  """(A,) excess kurtosis of each asset's pooled returns."""
  d = x - x.mean(axis=(0, 1))
  m2 = np.mean(d ** 2, axis=(0, 1))
  return np.mean(d ** 4, axis=(0, 1)) / m2 ** 2 - 3


def corr_matrix(x: np.ndarray) -> np.ndarray:
  """(A, A) correlation of daily returns pooled over windows and days."""
  return np.corrcoef(x.reshape(-1, x.shape[2]), rowvar=False)


def mean_pairwise_corr(x: np.ndarray) -> float:
  c = corr_matrix(x)
  a = c.shape[0]
  return float((c.sum() - np.trace(c)) / (a * (a - 1)))


def window_vol(x: np.ndarray) -> np.ndarray:
  """(n,) window realised volatility, mean over assets of sqrt(mean_t r^2)."""
  return np.sqrt(np.mean(x ** 2, axis=1)).mean(axis=1)


def cv_window_vol(x: np.ndarray) -> float:
  v = window_vol(x)
  return float(v.std() / v.mean())


def equal_weights(assets: int) -> np.ndarray:
  return np.full(assets, 1.0 / assets)


def portfolio_losses(x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """(n,) buy-and-hold loss over each window: -sum_a w_a (exp(sum_t r_ta) - 1)."""
  w = equal_weights(x.shape[2]) if weights is None else np.asarray(weights, np.float64)
  with np.errstate(over='ignore'):  # absurd returns give inf losses; callers check
    return -(np.expm1(x.sum(axis=1)) @ w)


def daily_portfolio_losses(r: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """(T,) one-day losses -sum_a w_a (exp(r_ta) - 1) of daily returns r (T, A)."""
  w = equal_weights(r.shape[1]) if weights is None else np.asarray(weights, np.float64)
  with np.errstate(over='ignore'):
    return -(np.expm1(r) @ w)


FACT_NAMES = ('acf_r_lag1', 'acf_abs_lag1', 'acf_abs_lag5', 'kurtosis_median',
              'leverage_lag1', 'mean_corr', 'cv_window_vol', 'var95', 'es975', 'var99')


class FactSums:
  """Per-window sums from which every stylized fact is recomputed for any weighting.

  The bootstrap resamples whole years of windows thousands of times; recomputing the
  facts from the (n, days, A) array each time costs a pass over all of it, whereas the
  facts are functions of sums over windows. Each row of `sums` holds one window's sums
  (moments of r and |r|, lagged cross sums, the 9 sums of the leverage correlation,
  cross products), so a replicate with window counts c (n,) is c @ sums followed by the
  closed forms below, exactly equal (up to rounding) to the direct definitions
  (`acf`, `leverage`, `excess_kurtosis`, `mean_pairwise_corr`, `cv_window_vol`).
  """

  def __init__(self, x: np.ndarray, weights: np.ndarray | None = None):
    x = check_scenarios(x)
    n, self.days, a = x.shape
    self.assets = a
    self.lags = [k for k in (1, 5) if k < self.days]
    y = np.abs(x)
    parts = [x.sum(1), (x ** 2).sum(1), (x ** 3).sum(1), (x ** 4).sum(1), y.sum(1)]
    for k in self.lags:
      for v in (x, y):
        parts += [(v[:, :-k] * v[:, k:]).sum(1), v[:, :-k].sum(1), v[:, k:].sum(1)]
    h, t = x[:, :-1], x[:, 1:]
    parts += [h.sum(1), (h ** 2).sum(1), t.sum(1), (t ** 2).sum(1), (t ** 3).sum(1),
              (t ** 4).sum(1), (h * t).sum(1), (h * t ** 2).sum(1)]
    vol = window_vol(x)
    self.sums = np.hstack([np.stack(parts, axis=1).reshape(n, -1),
                           np.einsum('ita,itb->iab', x, x).reshape(n, -1),
                           np.stack([vol, vol ** 2], axis=1)])
    self.n_parts = len(parts)
    self.losses = portfolio_losses(x, weights)

  def facts(self, counts: np.ndarray | None = None) -> dict[str, float]:
    """The stylized facts of the windows repeated counts (n,) times (None: once each)."""
    c = np.ones(len(self.sums)) if counts is None else np.asarray(counts, np.float64)
    a, days = self.assets, self.days
    s = c @ self.sums
    w = c.sum()
    p = s[:self.n_parts * a].reshape(self.n_parts, a)
    cross = s[self.n_parts * a:-2].reshape(a, a)
    v1, v2 = s[-2:]
    m1, m2, m3, m4, ab1 = p[:5]
    n_obs = w * days
    mu, ex2 = m1 / n_obs, m2 / n_obs
    var = ex2 - mu ** 2
    out = {}
    row = 5
    for k in self.lags:
      pairs = w * (days - k)
      for name, mean, var_y in (('r', mu, var), ('abs', ab1 / n_obs, ex2 - (ab1 / n_obs) ** 2)):
        prod, head, tail = p[row:row + 3]
        row += 3
        cov = prod - mean * (head + tail) + pairs * mean ** 2
        out[f'acf_{name}_lag{k}'] = float(np.mean(cov / var_y) / pairs)
    h1, h2, t1, t2, t3, t4, ht, ht2 = p[row:row + 8]
    pairs = w * (days - 1)
    sd = np.sqrt(var)
    su = (h1 - pairs * mu) / sd
    su2 = (h2 - 2 * mu * h1 + pairs * mu ** 2) / var
    sv = (t2 - 2 * mu * t1 + pairs * mu ** 2) / var
    sv2 = (t4 - 4 * mu * t3 + 6 * mu ** 2 * t2 - 4 * mu ** 3 * t1 + pairs * mu ** 4) / var ** 2
    suv = (ht2 - 2 * mu * ht + mu ** 2 * h1 - mu * t2 + 2 * mu ** 2 * t1
           - pairs * mu ** 3) / sd ** 3
    big_n = pairs * a
    eu, ev = su.sum() / big_n, sv.sum() / big_n
    cov_uv = suv.sum() / big_n - eu * ev
    out['leverage_lag1'] = float(cov_uv / np.sqrt((su2.sum() / big_n - eu ** 2)
                                                  * (sv2.sum() / big_n - ev ** 2)))
    c4 = m4 / n_obs - 4 * mu * m3 / n_obs + 6 * mu ** 2 * ex2 - 3 * mu ** 4
    out['kurtosis_median'] = float(np.median(c4 / var ** 2 - 3))
    cov_m = cross / n_obs - np.outer(mu, mu)
    corr = cov_m / np.outer(sd, sd)
    out['mean_corr'] = float((corr.sum() - np.trace(corr)) / (a * (a - 1)))
    mv = v1 / w
    out['cv_window_vol'] = float(np.sqrt(max(v2 / w - mv ** 2, 0.0)) / mv)
    losses = self.losses if counts is None else np.repeat(self.losses, c.astype(np.int64))
    if np.all(np.isfinite(losses)):
      out['var95'] = tail_risk.var_es(losses, 0.95)[0]
      out['es975'] = tail_risk.var_es(losses, 0.975)[1]
      out['var99'] = tail_risk.var_es(losses, 0.99)[0]
    else:  # exp overflow of absurd scenario returns: report the risk numbers as undefined
      out['var95'] = out['es975'] = out['var99'] = float('nan')
    out.setdefault('acf_abs_lag5', float('nan'))
    return {k: out[k] for k in FACT_NAMES}


def stylized_facts(x: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
  """FACT_NAMES -> value for windows x (n, days, A); portfolio `weights` (A,) for the
  VaR/ES entries (equal weights if None). Definitions in the module doc."""
  return FactSums(x, weights).facts()


def facts_with_intervals(x: np.ndarray, groups: np.ndarray, n_boot: int = 500,
                         level: float = 0.9, seed: int = 0,
                         weights: np.ndarray | None = None) -> dict[str, dict[str, float]]:
  """Each stylized fact with a percentile interval from the block bootstrap of groups.

  groups (n,): the year of each window for real data (year-block bootstrap), or
  np.arange(n) for generated windows (iid bootstrap). Returns name -> {'value', 'lo',
  'hi'}, plus 'level', 'n_boot' and 'n_groups' under the key '_bootstrap'.
  """
  fs = FactSums(x, weights)
  value = fs.facts()
  reps = []
  for idx in block_bootstrap.resample_indices(groups, n_boot, seed):
    f = fs.facts(np.bincount(idx, minlength=len(x)))
    reps.append([f[k] for k in FACT_NAMES])
  reps = np.array(reps, np.float64).reshape(n_boot, len(FACT_NAMES))
  reps = np.where(np.isfinite(reps), reps, np.nan)
  q = [(1 - level) / 2, (1 + level) / 2]
  lo, hi = np.full((2, len(FACT_NAMES)), np.nan)
  ok = ~np.all(np.isnan(reps), axis=0)  # a metric undefined in every replicate stays nan
  if ok.any():
    lo[ok], hi[ok] = np.nanquantile(reps[:, ok], q, axis=0)
  # An undefined point value gets no interval (replicates missing the culprit windows
  # would suggest one).
  out: dict[str, Any] = {
      k: ({'value': value[k], 'lo': float(lo[j]), 'hi': float(hi[j])}
          if math.isfinite(value[k]) else {'value': value[k], 'lo': math.nan, 'hi': math.nan})
      for j, k in enumerate(FACT_NAMES)}
  out['_bootstrap'] = {'level': level, 'n_boot': n_boot,
                       'n_groups': int(len(np.unique(groups)))}
  return out


# ------------------------------------------------------------------- discrimination


def _skew(y: np.ndarray) -> np.ndarray:
  d = y - y.mean(axis=1, keepdims=True)
  m2 = np.mean(d ** 2, axis=1)
  return np.mean(d ** 3, axis=1) / np.where(m2 > 0, m2, np.nan) ** 1.5


def _corr1(y: np.ndarray) -> np.ndarray:
  d = y - y.mean(axis=1, keepdims=True)
  den = np.sum(d ** 2, axis=1)
  return np.sum(d[:, :-1] * d[:, 1:], axis=1) / np.where(den > 0, den, np.nan)


def window_features(x: np.ndarray) -> np.ndarray:
  """(n, 8) features of each window, in the order of FEATURE_NAMES.

  log_window_vol log of `window_vol`; ew_return sum over days of the equal-weight daily
  log return p_t = mean_a r_ta; mean_corr mean off-diagonal correlation of the window's
  days x assets; vol_trend log(rms p over the second half / over the first half);
  tail_ratio max |r| / rms r over the window; ew_skew skewness of p_t; ew_acf1 lag-1
  autocorrelation of p_t; abs_acf1 lag-1 autocorrelation of |r| pooled over assets
  (centred on the window-asset mean of |r|). Undefined values (constant series) are 0.
  """
  n, days, a = x.shape
  p = x.mean(axis=2)
  rms = np.sqrt(np.mean(x ** 2, axis=(1, 2)))
  h = days // 2
  trend = np.log(np.sqrt(np.mean(p[:, h:] ** 2, axis=1) + 1e-300)
                 / np.sqrt(np.mean(p[:, :h] ** 2, axis=1) + 1e-300))
  d = x - x.mean(axis=1, keepdims=True)
  cov = np.einsum('ita,itb->iab', d, d)
  sd = np.sqrt(np.einsum('iaa->ia', cov))
  with np.errstate(invalid='ignore', divide='ignore'):
    corr = cov / (sd[:, :, None] * sd[:, None, :])
  corr = np.nan_to_num(corr)
  mean_corr = (corr.sum(axis=(1, 2)) - np.einsum('iaa->i', corr)) / (a * (a - 1))
  ab = np.abs(x) - np.abs(x).mean(axis=1, keepdims=True)
  den = np.sum(ab ** 2, axis=(1, 2))
  with np.errstate(invalid='ignore', divide='ignore'):
    abs_acf1 = np.sum(ab[:, :-1] * ab[:, 1:], axis=(1, 2)) / den
    feats = np.stack([np.log(window_vol(x) + 1e-300), p.sum(axis=1), mean_corr, trend,
                      np.abs(x).max(axis=(1, 2)) / rms, _skew(p), _corr1(p), abs_acf1],
                     axis=1)
  return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)


def _fit_logistic(f: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
  """Weights (F+1,) of an L2-penalised logistic regression, labels y in {-1, +1}."""
  a = np.hstack([f, np.ones((len(f), 1))])

  def loss(w):
    s = a @ w
    # logaddexp(0, -ys) is log(1 + exp(-ys)) without overflow.
    val = np.mean(np.logaddexp(0, -y * s)) + 0.5 * l2 * np.sum(w[:-1] ** 2)
    g = a.T @ (-y * special.expit(-y * s)) / len(y)
    g[:-1] += l2 * w[:-1]
    return val, g

  res = optimize.minimize(loss, np.zeros(a.shape[1]), jac=True, method='L-BFGS-B')
  return res.x


def discriminative_score(real: np.ndarray, fake: np.ndarray, n_splits: int = 5,
                         train_fraction: float = 0.7, l2: float = 1e-3,
                         seed: int = 0) -> dict[str, Any]:
  """|accuracy - 0.5| of a logistic regression telling real from fake windows.

  real, fake: (n, days, A) log returns. Each split draws m = min(n_real, n_fake) windows
  of each class without replacement, trains an L2-penalised (`l2`) logistic regression
  on `train_fraction` of each class, inputs the 8 `window_features` z-scored with the
  training part's statistics and their squares (16 inputs and a bias), and scores
  accuracy on the rest.
  0 = indistinguishable, 0.5 = perfectly separated. With small m the score has a noise
  floor: for m = 84 the test set has 52 windows, the accuracy's sd is about 0.07 and
  E|acc - 0.5| about 0.055 even for identical distributions.
  Returns {'score' (mean over splits), 'scores' (per split), 'm'}.
  """
  fr, ff = window_features(real), window_features(fake)
  m = min(len(fr), len(ff))
  k = int(round(train_fraction * m))
  if k < 2 or m - k < 1:
    raise ValueError(f'too few windows for a split: {len(fr)} real, {len(ff)} fake')
  rng = np.random.default_rng(seed)
  scores = []
  for _ in range(n_splits):
    ir, i_f = rng.permutation(len(fr))[:m], rng.permutation(len(ff))[:m]
    tr = np.vstack([fr[ir[:k]], ff[i_f[:k]]])
    te = np.vstack([fr[ir[k:]], ff[i_f[k:]]])
    ytr = np.r_[np.ones(k), -np.ones(k)]
    yte = np.r_[np.ones(m - k), -np.ones(m - k)]
    mu, sd = tr.mean(axis=0), tr.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    quad = lambda f: np.hstack([(f - mu) / sd, ((f - mu) / sd) ** 2])
    w = _fit_logistic(quad(tr), ytr, l2)
    s = np.hstack([quad(te), np.ones((len(te), 1))]) @ w
    acc = float(np.mean(np.where(s > 0, 1.0, -1.0) == yte))
    scores.append(abs(acc - 0.5))
  return {'score': float(np.mean(scores)), 'scores': scores, 'm': m}


# ------------------------------------------------------------------- memorisation


def nearest_train_distance(x: np.ndarray, train: np.ndarray, max_n: int | None = 2000,
                           seed: int = 0, chunk: int = 512
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Euclidean distance from windows to their nearest training window.

  x (n, days, A), train (m, days, A) raw log returns. At most `max_n` windows of x are
  used (a seeded random subset) to bound the cost n * m * days * A.
  Returns (distance (k,), nearest training index (k,), index into x (k,)); the
  distance is recomputed exactly for the nearest window (the expansion |a|^2 + |b|^2 -
  2ab used to search loses precision near 0, where memorised windows sit).
  """
  a = x.reshape(len(x), -1)
  b = train.reshape(len(train), -1)
  idx = np.arange(len(a))
  if max_n is not None and len(a) > max_n:
    idx = np.sort(np.random.default_rng(seed).choice(len(a), max_n, replace=False))
  a = a[idx]
  bb = np.sum(b ** 2, axis=1)
  nearest = np.empty(len(a), np.int64)
  for s in range(0, len(a), chunk):
    blk = a[s:s + chunk]
    d2 = np.sum(blk ** 2, axis=1)[:, None] + bb[None] - 2 * blk @ b.T
    nearest[s:s + chunk] = np.argmin(d2, axis=1)
  dist = np.sqrt(np.sum((a - b[nearest]) ** 2, axis=1))
  return dist, nearest, idx


# ------------------------------------------------------------------- likelihood


def gaussian_fit(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maximum-likelihood mean (A,) and covariance (A, A) of daily rows z (T, A)."""
  mean = z.mean(axis=0)
  d = z - mean
  return mean, d.T @ d / len(z)


def gaussian_logpdf(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
  """log N(z; mean, cov) of rows z (..., A), nats."""
  a = len(mean)
  chol = np.linalg.cholesky(cov)
  sol = np.linalg.solve(chol, (z - mean).reshape(-1, a).T)
  logdet = 2 * np.sum(np.log(np.diag(chol)))
  out = -0.5 * (np.sum(sol ** 2, axis=0) + logdet + a * math.log(2 * math.pi))
  return out.reshape(z.shape[:-1])


def student_t_fit(z: np.ndarray, nu: float, iters: int = 200,
                  tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
  """Location (A,) and scale matrix (A, A) of a multivariate t with fixed nu, by EM.

  E-step weights u_i = (nu + A) / (nu + delta_i), delta_i the Mahalanobis distance;
  M-step loc = sum u z / sum u, scale = sum u (z-loc)(z-loc)^T / T (Liu and Rubin 1995).
  """
  t, a = z.shape
  loc, scale = gaussian_fit(z)
  scale = scale * (nu - 2) / nu if nu > 2 else scale
  for _ in range(iters):
    chol = np.linalg.cholesky(scale)
    delta = np.sum(np.linalg.solve(chol, (z - loc).T) ** 2, axis=0)
    u = (nu + a) / (nu + delta)
    new_loc = u @ z / u.sum()
    d = z - new_loc
    new_scale = (d * u[:, None]).T @ d / t
    done = (np.max(np.abs(new_loc - loc)) < tol and
            np.max(np.abs(new_scale - scale)) < tol)
    loc, scale = new_loc, new_scale
    if done:
      break
  return loc, scale


def student_t_logpdf(z: np.ndarray, loc: np.ndarray, scale: np.ndarray,
                     nu: float) -> np.ndarray:
  """log of the multivariate t density t_nu(z; loc, scale) of rows z (..., A), nats."""
  a = len(loc)
  chol = np.linalg.cholesky(scale)
  sol = np.linalg.solve(chol, (z - loc).reshape(-1, a).T)
  delta = np.sum(sol ** 2, axis=0)
  logdet = 2 * np.sum(np.log(np.diag(chol)))
  out = (special.gammaln((nu + a) / 2) - special.gammaln(nu / 2)
         - 0.5 * a * math.log(nu * math.pi) - 0.5 * logdet
         - 0.5 * (nu + a) * np.log1p(delta / nu))
  return out.reshape(z.shape[:-1])


def window_nll_per_dim(daily_logpdf: np.ndarray) -> np.ndarray:
  """(n,) NLL per dimension of windows from per-day log densities (n, days) of A-dim rows."""
  return -daily_logpdf.sum(axis=1) / daily_logpdf.shape[1]


def nll_baselines(dataset: market.MarketDataset, nus: tuple[float, ...] = (5.0,),
                  n_boot: int = 500, level: float = 0.9, seed: int = 0) -> dict[str, Any]:
  """Held-out NLL (nats/dim) of iid-over-days density baselines fitted on training days.

  Models: full-covariance Gaussian and multivariate t for each nu in `nus`, fitted on
  standardised training days, scored on the non-overlapping held-out windows
  (dataset.heldout). For each: 'per_window_standardised' (n,), 'standardised' and
  'raw' (mean over windows, with year-block bootstrap intervals). raw = standardised +
  mean(log scale): the Jacobian of the standardisation, so raw is the NLL of the log
  returns themselves.
  """
  std = dataset.standardizer
  a = len(dataset.assets)
  z_train = std.forward(dataset.returns.values[dataset.train_days])
  z_test = std.forward(dataset.heldout.x)
  jac = -std.log_det_per_window(dataset.days) / (dataset.days * a)
  models = {}
  mean, cov = gaussian_fit(z_train)
  models['gaussian_fullcov'] = gaussian_logpdf(z_test, mean, cov) / a
  for nu in nus:
    loc, scale = student_t_fit(z_train, nu)
    models[f'student_t_nu{nu:g}'] = student_t_logpdf(z_test, loc, scale, nu) / a
  out = {}
  groups = dataset.heldout.year
  for name, lp in models.items():
    per_window = window_nll_per_dim(lp)
    stat = lambda i, v=per_window: float(np.mean(v[i]))
    s = block_bootstrap.interval(stat, groups, n_boot, level, seed)
    raw = {k: (v + jac if k in ('value', 'lo', 'hi') else v) for k, v in s.items()}
    out[name] = {'standardised': s, 'raw': raw,
                 'per_window_standardised': per_window.tolist()}
  return {'models': out, 'jacobian_per_dim': jac,
          'evaluated_on': f'{len(dataset.heldout)} non-overlapping held-out windows'}
