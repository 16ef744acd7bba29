"""Mean and covariance of feature vectors accumulated batch by batch (FID without holding
every feature or image in memory).

`RunningMoments` keeps the count, the float64 mean and the float64 sum of squared
deviations M2 (d, d), and merges batches with the pairwise update of Chan, Golub and
LeVeque (1979): for parts a and b with counts n_a, n_b and delta = mean_b - mean_a,

    mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + outer(delta, delta) * n_a n_b / n.

That is exact in exact arithmetic and, unlike sum-of-squares, does not cancel
catastrophically. The covariance is M2 / (n - 1), as `np.cov` (ddof=1) and the suites
compute it. Two accumulators merge the same way, so shares from several processes or
batches combine in any grouping (up to float re-association).
"""
from __future__ import annotations

import numpy as np


class RunningMoments:
  """Streaming (count, mean (d,), M2 (d, d)) of d-dimensional feature rows, float64."""

  def __init__(self, dim: int):
    if dim <= 0:
      raise ValueError(f'feature dimension must be positive, got {dim}')
    self.dim = int(dim)
    self.count = 0
    self.mean = np.zeros(self.dim, np.float64)
    self.m2 = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features) -> 'RunningMoments':
    """Adds the rows of an (n, d) batch; returns self."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f'expected (n, {self.dim}) features, got shape {x.shape}')
    if x.shape[0] == 0:
      return self
    batch = RunningMoments(self.dim)
    batch.count = x.shape[0]
    batch.mean = x.mean(axis=0)
    centred = x - batch.mean
    batch.m2 = centred.T @ centred
    return self.merge(batch)

  def merge(self, other: 'RunningMoments') -> 'RunningMoments':
    """Folds another accumulator of the same dimension into this one; returns self."""
    if other.dim != self.dim:
      raise ValueError(f'cannot merge moments of dimension {other.dim} into {self.dim}')
    if other.count == 0:
      return self
    if self.count == 0:
      self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
      return self
    n = self.count + other.count
    delta = other.mean - self.mean
    self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
    self.mean = self.mean + delta * (other.count / n)
    self.count = n
    return self

  def covariance(self) -> np.ndarray:
    """(d, d) sample covariance M2 / (count - 1); ValueError with fewer than 2 rows."""
    if self.count < 2:
      raise ValueError(f'a covariance needs at least 2 feature rows, got {self.count}')
    return self.m2 / (self.count - 1)

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)), float64: what `metrics.frechet_distance` takes."""
    return self.mean.copy(), self.covariance()
