"""Percentile bootstrap intervals that resample whole groups (years) of windows.

Held-out market windows are few (84 non-overlapping ones over 7 years on the default
split) and windows of the same year share a volatility regime, so resampling single
windows would understate the uncertainty. The block bootstrap (Kunsch 1989; Efron and
Tibshirani 1993, ch. 13 for the percentile interval) draws G groups with replacement
from the G groups present and keeps every window of each drawn group; with one group
per window it is the ordinary iid bootstrap.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def resample_indices(groups: np.ndarray, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
  """Yields `n_boot` index arrays into `groups` (n,), each a resample of whole groups."""
  groups = np.asarray(groups)
  labels, inverse = np.unique(groups, return_inverse=True)
  members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
  rng = np.random.default_rng(seed)
  for _ in range(n_boot):
    picks = rng.integers(0, len(labels), len(labels))
    yield np.concatenate([members[g] for g in picks])


def interval(stat: Callable[[np.ndarray], float | np.ndarray], groups: np.ndarray,
             n_boot: int = 500, level: float = 0.9, seed: int = 0) -> dict[str, object]:
  """Point value and percentile interval of `stat(index)` under the group bootstrap.

  stat: maps an index array into the n windows to a float (or a 1-D array of floats).
  groups: (n,) group label (year) of each window; np.arange(n) for the iid bootstrap.
  Returns {'value', 'lo', 'hi', 'level', 'n_boot', 'n_groups'}; values are floats (or
  lists for array statistics). Replicates that are non-finite are ignored; if all are,
  lo and hi are nan.
  """
  if not 0 < level < 1:
    raise ValueError(f'level must be in (0, 1), got {level}')
  groups = np.asarray(groups)
  value = np.asarray(stat(np.arange(len(groups))), np.float64)
  reps = np.array([stat(i) for i in resample_indices(groups, n_boot, seed)], np.float64)
  q = [(1 - level) / 2, (1 + level) / 2]
  reps = np.where(np.isfinite(reps), reps, np.nan).reshape(n_boot, value.size)
  bounds = np.full((2, reps.shape[1]), np.nan)
  ok = ~np.all(np.isnan(reps), axis=0)  # entries undefined in every replicate stay nan
  if np.any(ok):
    bounds[:, ok] = np.nanquantile(reps[:, ok], q, axis=0)
  lo, hi = bounds.reshape((2,) + value.shape)
  out = (lambda a: float(a)) if value.ndim == 0 else (lambda a: np.asarray(a).tolist())
  return {'value': out(value), 'lo': out(lo), 'hi': out(hi), 'level': level,
          'n_boot': n_boot, 'n_groups': int(len(np.unique(groups)))}
