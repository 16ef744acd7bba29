"""biflow_jax.evaluation.backtest against values computed by hand from the formulas."""
import numpy as np
import pytest
from scipy import stats

from biflow_jax.evaluation import backtest


def test_exceedances_are_strict_and_broadcast():
  losses = np.array([0.5, 1.0, 1.5, 2.0])
  np.testing.assert_array_equal(backtest.exceedances(losses, 1.0), [False, False, True, True])
  np.testing.assert_array_equal(backtest.exceedances(losses, [1, 1, 2, 1]),
                                [False, False, False, True])
  with pytest.raises(ValueError):
    backtest.exceedances(np.array([np.nan]), 1.0)


def test_kupiec_by_hand():
  # T = 250, x = 5, p = 0.01, x/T = 0.02:
  # LR = -2 [245 ln 0.99 + 5 ln 0.01] + 2 [245 ln 0.98 + 5 ln 0.02]
  #    = -2 [-2.462333 - 23.025851] + 2 [-4.949663 - 19.560115] = 50.976368 - 49.019556
  #    = 1.956812 (to the rounding of the hand logs).
  hits = np.r_[np.ones(5), np.zeros(245)]
  r = backtest.kupiec_pof(hits, 0.01)
  assert r['lr'] == pytest.approx(1.956812, abs=1e-5)
  assert r['p_value'] == pytest.approx(stats.chi2.sf(1.956812, 1), abs=1e-5)
  assert (r['exceptions'], r['days'], r['rate'], r['expected']) == (5, 250, 0.02, 2.5)
  # No exception: LR = -2 * 250 ln 0.99 = 5.025168 (0 ln 0 = 0), rejected at 5%.
  r0 = backtest.kupiec_pof(np.zeros(250), 0.01)
  assert r0['lr'] == pytest.approx(5.025168, abs=1e-6) and r0['p_value'] < 0.05
  # Exactly the expected rate: LR = 0.
  at_rate = backtest.kupiec_pof(np.r_[np.ones(1), np.zeros(99)], 0.01)
  assert at_rate['lr'] == pytest.approx(0, abs=1e-12)


def test_christoffersen_by_hand():
  hits = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
  # Pairs: 00 00 01 11 11 10 00 00 00 -> n00 = 5, n01 = 1, n10 = 1, n11 = 2.
  assert backtest.transition_counts(hits) == (5, 1, 1, 2)
  # pi01 = 1/6, pi11 = 2/3, pi = 3/9 = 1/3.
  # restricted: 6 ln(2/3) + 3 ln(1/3) = -2.432791 - 3.295837 = -5.728628
  # free: 5 ln(5/6) + ln(1/6) + ln(1/3) + 2 ln(2/3)
  #     = -0.911608 - 1.791759 - 1.098612 - 0.810930 = -4.612909
  # LR_ind = 2 * 5.728628 - 2 * 4.612909 = 2.231438
  r = backtest.christoffersen_independence(hits)
  assert r['lr'] == pytest.approx(2.231438, abs=1e-5)
  assert (r['pi01'], r['pi11']) == pytest.approx((1 / 6, 2 / 3))
  # Conditional coverage at p = 0.1, x = 3 of T = 10:
  # LR_pof = -2 [7 ln 0.9 + 3 ln 0.1] + 2 [7 ln 0.7 + 3 ln 0.3]
  #        = 15.290558 - 12.217287 = 3.073271;  LR_cc = 3.073271 + 2.231438 = 5.304709.
  cc = backtest.christoffersen_cc(hits, 0.1)
  assert cc['lr_pof'] == pytest.approx(3.073271, abs=1e-5)
  assert cc['lr'] == pytest.approx(5.304709, abs=1e-5)
  assert cc['p_value'] == pytest.approx(stats.chi2.sf(5.304709, 2), abs=1e-5)


def test_christoffersen_no_dependence_and_no_exception():
  # pi01 = pi11 = pi = 1/3: the free and restricted fits coincide, LR_ind = 0.
  r = backtest.christoffersen_independence(np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0]))
  assert r['lr'] == pytest.approx(0, abs=1e-12)
  r0 = backtest.christoffersen_independence(np.zeros(20))
  assert r0['lr'] == 0 and np.isnan(r0['pi11'])
  # Clustered exceptions are strongly dependent.
  clustered = np.zeros(500)
  clustered[100:110] = 1
  assert backtest.christoffersen_independence(clustered)['p_value'] < 1e-6


def test_basel_zone_bounds_reproduce_the_table():
  # Basel (1996): green 0-4, yellow 5-9, red >= 10 exceptions for 250 days at 99%:
  # binomial(250, 0.01) P(X <= 4) = 0.892 < 0.95 <= P(X <= 5) = 0.959,
  # P(X <= 9) = 0.99975 < 0.9999 <= P(X <= 10) = 0.99995.
  assert backtest.zone_bounds(250, 0.01) == (5, 10)


def test_traffic_light_blocks():
  counts = [0, 4, 5, 9, 10]
  hits = []
  for c in counts:
    block = np.zeros(250)
    block[:c] = 1
    hits.append(block)
  hits = np.concatenate(hits + [np.ones(30)])  # 30 leftover days, all exceptions
  tl = backtest.traffic_light(hits)
  assert [b['zone'] for b in tl['blocks']] == ['green', 'green', 'yellow', 'yellow', 'red']
  assert [b['exceptions'] for b in tl['blocks']] == counts
  assert tl['counts'] == {'green': 2, 'yellow': 2, 'red': 1}
  assert tl['leftover_days'] == 30 and tl['bounds'] == (5, 10)


def test_backtest_bundle():
  rng = np.random.default_rng(0)
  losses = rng.standard_normal(2500)
  out = backtest.backtest(losses, stats.norm.ppf(0.99), 0.99)
  # A correct VaR on iid data: about 25 exceptions, not rejected.
  assert 10 <= out['kupiec']['exceptions'] <= 40
  assert out['kupiec']['p_value'] > 0.01 and out['independence']['p_value'] > 0.01
  assert sum(out['traffic_light']['counts'].values()) == 10
  bad = backtest.backtest(losses, stats.norm.ppf(0.95), 0.99)
  assert bad['kupiec']['p_value'] < 1e-6
  with pytest.raises(ValueError):
    backtest.kupiec_pof(np.array([0, 2]), 0.01)
