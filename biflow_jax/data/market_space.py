"""The space F and G model market windows in: standardised, then PCA-whitened per day.

    s = (r - mean) / scale           per asset (phase 1's market.Standardizer)
    u = s @ V / sqrt(lambda)         per day: V (A, A) eigenvectors and lambda (A,)
                                     eigenvalues of the training days' second moment of s

Why whiten: F's tokens are days, and each of its affine blocks moves a token's A
numbers elementwise given the other tokens, so correlation *within* a day (mean pairwise
0.29 on training days) is the hardest thing for it to build. After the fixed linear map
a day's coordinates are uncorrelated on training data (the first one is the market
factor, which carries crash days), so F at initialisation is already the iid Gaussian
baseline with the training covariance, and its blocks spend their capacity on tails and
on volatility clustering over days. With `whiten=False` u = s.

Jacobians (the map is linear, so the same for every window; nats):

    log|det du/ds| per day  = -0.5 sum_k log lambda_k
    log|det du/dr| window   = days * ( -sum_a log scale_a - 0.5 sum_k log lambda_k )
    NLL(r) = NLL(u) - log|det du/dr|,  NLL(s) = NLL(u) - days * log|det du/ds|

Eigenvector signs are fixed (each column sums to a positive number; for a column that
sums to ~0, its largest-magnitude entry is positive), so a fit is deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from biflow_jax.data import market


@dataclasses.dataclass(frozen=True)
class ModelSpace:
  """r (..., days, A) raw log returns <-> u (..., days, A) model space (module doc).

  standardizer: phase 1's per-asset standardisation. basis (A, A): columns are the
  eigenvectors V; eigenvalues (A,) lambda, descending (all ones and V = I unwhitened).
  """
  standardizer: market.Standardizer
  basis: np.ndarray
  eigenvalues: np.ndarray

  @classmethod
  def fit(cls, train_returns: np.ndarray, standardizer: market.Standardizer,
          whiten: bool = True) -> ModelSpace:
    """Fits the whitening on (T, A) training daily log returns (float64).

    Raises ValueError when the second-moment matrix is singular (an asset that is a
    linear combination of others, or fewer days than assets).
    """
    s = standardizer.forward(np.asarray(train_returns, np.float64))
    a = s.shape[1]
    if not whiten:
      return cls(standardizer, np.eye(a), np.ones(a))
    moment = s.T @ s / len(s)
    lam, vec = np.linalg.eigh(moment)
    lam, vec = lam[::-1], vec[:, ::-1]
    if not lam[-1] > 1e-10 * lam[0]:
      raise ValueError(f'the training days\' correlation matrix is singular (smallest '
                       f'eigenvalue {lam[-1]:.3g}, {len(s)} days, {a} assets): whitening needs '
                       'more days than assets and no redundant asset; or set market.whiten=False')
    sums = vec.sum(axis=0)
    peak = vec[np.argmax(np.abs(vec), axis=0), np.arange(a)]
    sign = np.where(np.abs(sums) > 1e-8, np.sign(sums), np.sign(peak))
    return cls(standardizer, vec * sign, lam)

  def forward(self, r: np.ndarray) -> np.ndarray:
    """(..., A) raw log returns -> (..., A) model space (float64)."""
    return (self.standardizer.forward(r) @ self.basis) / np.sqrt(self.eigenvalues)

  def inverse(self, u: np.ndarray) -> np.ndarray:
    """(..., A) model space -> (..., A) raw log returns (float64)."""
    s = (np.asarray(u, np.float64) * np.sqrt(self.eigenvalues)) @ self.basis.T
    return self.standardizer.inverse(s)

  def whitening_log_det_per_day(self) -> float:
    """log|det du/ds| of one day, nats."""
    return float(-0.5 * np.sum(np.log(self.eigenvalues)))

  def log_det_per_window(self, days: int) -> float:
    """log|det du/dr| of one (days, A) window of raw log returns, nats."""
    return self.standardizer.log_det_per_window(days) + days * self.whitening_log_det_per_day()

  def raw_nll(self, nll_model: np.ndarray, days: int) -> np.ndarray:
    """Per-window NLL (nats) of raw log returns from that of model-space windows."""
    return np.asarray(nll_model) - self.log_det_per_window(days)

  def standardised_nll(self, nll_model: np.ndarray, days: int) -> np.ndarray:
    """Per-window NLL (nats) of standardised windows (phase 1's likelihood units)."""
    return np.asarray(nll_model) - days * self.whitening_log_det_per_day()

  def to_dict(self) -> dict[str, Any]:
    return {'whitened': bool(not np.allclose(self.eigenvalues, 1.0)),
            'eigenvalues': self.eigenvalues.tolist(),
            'whitening_log_det_per_day': self.whitening_log_det_per_day()}
