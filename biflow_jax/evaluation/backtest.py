"""VaR backtests: exceedance series, Kupiec POF, Christoffersen independence and
conditional coverage, and the Basel traffic light.

An exceedance (exception) on day t is L_t > VaR_t, the realised loss above the VaR
forecast made for that day. With I_t in {0, 1}, T days, x = sum I_t exceptions and
p = 1 - coverage level (0.01 for a 99% VaR):

Kupiec (1995) proportion of failures, chi2(1) under H0: P(I_t = 1) = p,
  LR_pof = -2 [ (T-x) log(1-p) + x log p ] + 2 [ (T-x) log(1-x/T) + x log(x/T) ].

Christoffersen (1998) independence, chi2(1) under H0: I_t is not a first-order Markov
chain; with n_ij the number of days with I_{t-1} = i and I_t = j (T-1 transitions),
pi_01 = n01/(n00+n01), pi_11 = n11/(n10+n11), pi = (n01+n11)/(T-1),
  LR_ind = -2 [ (n00+n10) log(1-pi) + (n01+n11) log pi ]
           + 2 [ n00 log(1-pi_01) + n01 log pi_01 + n10 log(1-pi_11) + n11 log pi_11 ],
and conditional coverage LR_cc = LR_pof + LR_ind, chi2(2). Throughout 0 log 0 = 0.

Basel Committee (1996), "Supervisory framework for the use of backtesting": 99% VaR
over 250 days is green with 0-4 exceptions, yellow with 5-9, red with 10 or more. The
zones come from the binomial(250, 0.01) distribution: yellow starts at the smallest x
with P(X <= x) >= 0.95, red at the smallest x with P(X <= x) >= 0.9999; `zone_bounds`
applies the same rule to any window length and level.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

BASEL_DAYS = 250
BASEL_YELLOW_CUM = 0.95
BASEL_RED_CUM = 0.9999


def exceedances(losses: np.ndarray, var: np.ndarray | float) -> np.ndarray:
  """(T,) bool: realised loss (T,) above the VaR forecast (T,) or a constant VaR."""
  losses = np.asarray(losses, np.float64)
  var = np.broadcast_to(np.asarray(var, np.float64), losses.shape)
  if losses.ndim != 1:
    raise ValueError(f'losses must be 1-D (T,), got shape {losses.shape}')
  if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(var))):
    raise ValueError('losses and VaR must be finite')
  return losses > var


def _xlogy(x: float, y: float) -> float:
  return 0.0 if x == 0 else x * math.log(y)


def _hits(hits: np.ndarray) -> np.ndarray:
  hits = np.asarray(hits)
  if hits.ndim != 1 or hits.size == 0:
    raise ValueError(f'hits must be a non-empty 1-D array, got shape {hits.shape}')
  if not np.all((hits == 0) | (hits == 1)):
    raise ValueError('hits must be 0/1 (or bool)')
  return hits.astype(np.int64)


def kupiec_pof(hits: np.ndarray, p: float) -> dict[str, float]:
  """Kupiec (1995) POF test of the exception rate. hits (T,) 0/1, p = 1 - VaR level.

  Returns {'lr', 'p_value' (chi2 with 1 dof), 'exceptions', 'days', 'rate', 'expected'}.
  """
  if not 0 < p < 1:
    raise ValueError(f'p must be in (0, 1), got {p}')
  i = _hits(hits)
  t, x = len(i), int(i.sum())
  rate = x / t
  lr = -2 * (_xlogy(t - x, 1 - p) + _xlogy(x, p)) + 2 * (
      _xlogy(t - x, 1 - rate) + _xlogy(x, rate))
  lr = max(lr, 0.0)
  return {'lr': lr, 'p_value': float(stats.chi2.sf(lr, 1)), 'exceptions': x,
          'days': t, 'rate': rate, 'expected': p * t}


def transition_counts(hits: np.ndarray) -> tuple[int, int, int, int]:
  """(n00, n01, n10, n11): counts of consecutive pairs (I_{t-1}, I_t)."""
  i = _hits(hits)
  prev, cur = i[:-1], i[1:]
  return (int(np.sum((prev == 0) & (cur == 0))), int(np.sum((prev == 0) & (cur == 1))),
          int(np.sum((prev == 1) & (cur == 0))), int(np.sum((prev == 1) & (cur == 1))))


def christoffersen_independence(hits: np.ndarray) -> dict[str, float]:
  """Christoffersen (1998) first-order Markov independence test. hits (T,) 0/1.

  Returns {'lr', 'p_value' (chi2, 1 dof), 'n00', 'n01', 'n10', 'n11', 'pi01', 'pi11'}.
  With no exception after an exception possible (n10 + n11 = 0) pi11 is nan and
  LR_ind reduces to its n00/n01 terms (both restricted and free fits give pi_01 = pi).
  """
  n00, n01, n10, n11 = transition_counts(hits)
  total = n00 + n01 + n10 + n11
  if total == 0:
    raise ValueError('the independence test needs at least 2 days')
  pi = (n01 + n11) / total
  pi01 = n01 / (n00 + n01) if n00 + n01 else float('nan')
  pi11 = n11 / (n10 + n11) if n10 + n11 else float('nan')
  restricted = _xlogy(n00 + n10, 1 - pi) + _xlogy(n01 + n11, pi)
  free = 0.0
  if n00 + n01:
    free += _xlogy(n00, 1 - pi01) + _xlogy(n01, pi01)
  if n10 + n11:
    free += _xlogy(n10, 1 - pi11) + _xlogy(n11, pi11)
  lr = max(-2 * restricted + 2 * free, 0.0)
  return {'lr': lr, 'p_value': float(stats.chi2.sf(lr, 1)), 'n00': n00, 'n01': n01,
          'n10': n10, 'n11': n11, 'pi01': pi01, 'pi11': pi11}


def christoffersen_cc(hits: np.ndarray, p: float) -> dict[str, float]:
  """Conditional coverage LR_cc = LR_pof + LR_ind, chi2 with 2 dof (Christoffersen 1998)."""
  pof = kupiec_pof(hits, p)
  ind = christoffersen_independence(hits)
  lr = pof['lr'] + ind['lr']
  return {'lr': lr, 'p_value': float(stats.chi2.sf(lr, 2)), 'lr_pof': pof['lr'],
          'lr_ind': ind['lr']}


def zone_bounds(days: int = BASEL_DAYS, p: float = 0.01) -> tuple[int, int]:
  """(first yellow, first red) exception counts for `days` days at exception rate p.

  Smallest x with binomial(days, p) P(X <= x) >= 0.95, resp. >= 0.9999 (Basel 1996);
  (5, 10) for 250 days at 99%.
  """
  cdf = stats.binom.cdf(np.arange(days + 1), days, p)
  # The 1e-12 keeps a cdf that equals a threshold up to rounding on the right side.
  yellow = int(np.argmax(cdf >= BASEL_YELLOW_CUM - 1e-12))
  red = int(np.argmax(cdf >= BASEL_RED_CUM - 1e-12))
  return yellow, red


def traffic_light(hits: np.ndarray, p: float = 0.01,
                  days: int = BASEL_DAYS) -> dict[str, object]:
  """Basel traffic light for each consecutive block of `days` days of hits (T,).

  Returns {'blocks': [{'start', 'exceptions', 'zone'}], 'counts': {'green', 'yellow',
  'red'}, 'bounds': (first yellow, first red), 'leftover_days'}: the last T mod days
  days form no block and are not classified.
  """
  i = _hits(hits)
  yellow, red = zone_bounds(days, p)
  blocks = []
  for s in range(0, len(i) - days + 1, days):
    x = int(i[s:s + days].sum())
    zone = 'green' if x < yellow else ('yellow' if x < red else 'red')
    blocks.append({'start': s, 'exceptions': x, 'zone': zone})
  counts = {z: sum(b['zone'] == z for b in blocks) for z in ('green', 'yellow', 'red')}
  return {'blocks': blocks, 'counts': counts, 'bounds': (yellow, red),
          'leftover_days': len(i) % days}


def backtest(losses: np.ndarray, var: np.ndarray | float, level: float = 0.99) -> dict[str, object]:
  """All of the above for realised losses (T,) against VaR forecasts at `level`."""
  hits = exceedances(losses, var)
  p = 1 - level
  return {'level': level, 'kupiec': kupiec_pof(hits, p),
          'independence': christoffersen_independence(hits),
          'conditional_coverage': christoffersen_cc(hits, p),
          'traffic_light': traffic_light(hits, p)}
