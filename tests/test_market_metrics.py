"""market_metrics on synthetic data with known answers, and the baselines' shapes and
fits on the 2-year slice (2007 train, 2008 held-out)."""
import math

import numpy as np
import pytest
from scipy import stats

from biflow_jax.data import market
from biflow_jax.evaluation import market_baselines as mb
from biflow_jax.evaluation import market_metrics as mm


@pytest.fixture(scope='module')
def slice_ds():
  return market.load_dataset(start='2007-01-01', end='2008-12-31')


def _garch_windows(rng, n, days, assets, omega=0.05, alpha=0.1, beta=0.85, burn=100):
  sigma2 = np.full((n, assets), omega / (1 - alpha - beta))
  out = np.empty((n, burn + days, assets))
  for t in range(burn + days):
    out[:, t] = np.sqrt(sigma2) * rng.standard_normal((n, assets))
    sigma2 = omega + alpha * out[:, t] ** 2 + beta * sigma2
  return out[:, burn:] * 0.01


def test_iid_gaussian_facts_are_zero():
  x = np.random.default_rng(0).normal(0, 0.01, (2000, 20, 5))
  f = mm.stylized_facts(x)
  for k in ('acf_r_lag1', 'acf_abs_lag1', 'acf_abs_lag5', 'leverage_lag1', 'mean_corr'):
    assert abs(f[k]) < 0.02, k
  assert abs(f['kurtosis_median']) < 0.1
  # Window vol of 20 x 5 iid normals: CV about sqrt(1/200) / ... small.
  assert f['cv_window_vol'] < 0.1


def test_garch_has_volatility_clustering_but_no_linear_acf():
  x = _garch_windows(np.random.default_rng(1), 1000, 20, 4)
  f = mm.stylized_facts(x)
  assert f['acf_abs_lag1'] > 0.05 and f['acf_abs_lag5'] > 0.03
  assert abs(f['acf_r_lag1']) < 0.02
  assert f['kurtosis_median'] > 0.5


def test_ar1_acf_and_equicorrelation():
  rng = np.random.default_rng(2)
  phi, n, days = 0.3, 3000, 20
  x = np.empty((n, days, 3))
  x[:, 0] = rng.standard_normal((n, 3)) / math.sqrt(1 - phi ** 2)
  for t in range(1, days):
    x[:, t] = phi * x[:, t - 1] + rng.standard_normal((n, 3))
  assert mm.acf(x, 1) == pytest.approx(phi, abs=0.02)
  assert mm.acf(x, 2) == pytest.approx(phi ** 2, abs=0.02)
  cov = np.full((4, 4), 0.4) + 0.6 * np.eye(4)
  y = rng.multivariate_normal(np.zeros(4), cov, (1000, 20))
  assert mm.mean_pairwise_corr(y) == pytest.approx(0.4, abs=0.02)


def test_known_kurtosis_and_leverage():
  rng = np.random.default_rng(3)
  t10 = stats.t.rvs(10, size=(4000, 20, 3), random_state=rng)
  # Excess kurtosis of t_nu is 6 / (nu - 4) = 1 for nu = 10.
  assert np.median(mm.excess_kurtosis(t10)) == pytest.approx(1.0, abs=0.25)
  # Negative returns raise the next day's volatility: leverage < 0.
  n, days = 2000, 20
  x = np.empty((n, days, 2))
  x[:, 0] = rng.standard_normal((n, 2))
  for t in range(1, days):
    vol = np.exp(-0.8 * np.clip(x[:, t - 1], -3, 3))
    x[:, t] = vol * rng.standard_normal((n, 2))
  assert mm.leverage(x) < -0.1


def test_fact_sums_equal_direct_definitions():
  rng = np.random.default_rng(4)
  x = stats.t.rvs(4, size=(300, 20, 6), random_state=rng) * 0.01 + 0.001
  direct = {'acf_r_lag1': mm.acf(x, 1), 'acf_abs_lag1': mm.acf(x, 1, True),
            'acf_abs_lag5': mm.acf(x, 5, True),
            'kurtosis_median': float(np.median(mm.excess_kurtosis(x))),
            'leverage_lag1': mm.leverage(x), 'mean_corr': mm.mean_pairwise_corr(x),
            'cv_window_vol': mm.cv_window_vol(x)}
  fs = mm.FactSums(x)
  got = fs.facts()
  for k, v in direct.items():
    assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
  counts = rng.integers(0, 3, len(x))
  weighted = fs.facts(counts)
  repeated = mm.stylized_facts(np.repeat(x, counts, axis=0))
  for k in mm.FACT_NAMES:
    assert weighted[k] == pytest.approx(repeated[k], rel=1e-9, abs=1e-12), k


def test_portfolio_losses_and_window_vol_by_hand():
  x = np.zeros((2, 2, 2))
  x[0, 0] = [0.1, -0.2]
  x[1, :, 0] = 0.05
  x[1, :, 1] = -0.05
  want0 = -(0.5 * math.expm1(0.1) + 0.5 * math.expm1(-0.2))
  want1 = -(0.5 * math.expm1(0.1) + 0.5 * math.expm1(-0.1))
  np.testing.assert_allclose(mm.portfolio_losses(x), [want0, want1], rtol=1e-12)
  np.testing.assert_allclose(mm.portfolio_losses(x, np.array([1.0, 0.0])),
                             [-math.expm1(0.1), -math.expm1(0.1)], rtol=1e-12)
  # Window vol: mean over assets of sqrt(mean over days of r^2).
  v = [(math.sqrt(0.01 / 2) + math.sqrt(0.04 / 2)) / 2, 0.05]
  np.testing.assert_allclose(mm.window_vol(x), v, rtol=1e-12)
  assert mm.cv_window_vol(x) == pytest.approx(abs(v[0] - v[1]) / (v[0] + v[1]), rel=1e-12)
  np.testing.assert_allclose(mm.daily_portfolio_losses(x[0]), [want0, 0.0], rtol=1e-12)


def test_discriminative_score_separates_only_different_sets():
  rng = np.random.default_rng(5)
  a = rng.normal(0, 0.01, (600, 20, 4))
  b = rng.normal(0, 0.01, (600, 20, 4))
  assert mm.discriminative_score(a, b)['score'] < 0.08
  # Same marginal scale on average but a spread of volatility regimes: only the squared
  # features can see it.
  regimes = np.exp(rng.normal(0, 0.6, (600, 1, 1)))
  c = rng.normal(0, 0.01, (600, 20, 4)) * regimes / np.sqrt(np.mean(regimes ** 2))
  assert mm.discriminative_score(a, c)['score'] > 0.2
  assert mm.discriminative_score(a, 3 * b)['score'] > 0.45
  assert mm.window_features(a).shape == (600, len(mm.FEATURE_NAMES))


def test_nearest_train_distance():
  # Training windows i * 0.1 (+ noise): neighbours are at least 0.1 * sqrt(12) apart.
  rng = np.random.default_rng(6)
  train = 0.1 * np.arange(50)[:, None, None] + rng.normal(0, 1e-4, (50, 4, 3))
  shift = np.zeros((4, 3))
  shift[0, 0] = 0.03
  d, nearest, idx = mm.nearest_train_distance(np.stack([train[7], train[9] + shift]), train)
  np.testing.assert_allclose(d, [0.0, 0.03], atol=1e-12)
  assert list(nearest) == [7, 9] and list(idx) == [0, 1]
  d2, _, idx2 = mm.nearest_train_distance(train, train, max_n=10)
  assert len(d2) == 10 and np.all(d2 == 0) and len(set(idx2)) == 10


def test_densities_match_scipy_and_t_fit_recovers_parameters():
  rng = np.random.default_rng(7)
  cov = np.array([[1.0, 0.3, 0.1], [0.3, 2.0, -0.2], [0.1, -0.2, 0.5]])
  loc = np.array([0.1, -0.2, 0.0])
  z = rng.standard_normal((10, 3))
  np.testing.assert_allclose(mm.gaussian_logpdf(z, loc, cov),
                             stats.multivariate_normal(loc, cov).logpdf(z), rtol=1e-10)
  np.testing.assert_allclose(mm.student_t_logpdf(z, loc, cov, 5.0),
                             stats.multivariate_t(loc, cov, df=5).logpdf(z), rtol=1e-10)
  sample = stats.multivariate_t(loc, cov, df=5).rvs(40_000, random_state=rng)
  fit_loc, fit_scale = mm.student_t_fit(sample, 5.0)
  np.testing.assert_allclose(fit_loc, loc, atol=0.03)
  np.testing.assert_allclose(fit_scale, cov, atol=0.06)


def test_nll_baselines_units_and_jacobian(slice_ds):
  out = mm.nll_baselines(slice_ds, nus=(5.0,), n_boot=20)
  scale = slice_ds.standardizer.scale
  assert out['jacobian_per_dim'] == pytest.approx(np.mean(np.log(scale)), rel=1e-12)
  for m in out['models'].values():
    assert len(m['per_window_standardised']) == len(slice_ds.heldout)
    assert m['raw']['value'] == pytest.approx(m['standardised']['value']
                                              + out['jacobian_per_dim'], rel=1e-12)
  # Directly: the Gaussian on raw returns with the implied mean/covariance gives the raw NLL.
  z_train = slice_ds.standardizer.forward(slice_ds.returns.values[slice_ds.train_days])
  mean, cov = mm.gaussian_fit(z_train)
  raw_mean = slice_ds.standardizer.inverse(mean)
  raw_cov = cov * np.outer(scale, scale)
  lp = stats.multivariate_normal(raw_mean, raw_cov).logpdf(slice_ds.heldout.x.reshape(-1, 20))
  direct = -lp.sum() / (slice_ds.heldout.x.size)
  assert out['models']['gaussian_fullcov']['raw']['value'] == pytest.approx(direct, rel=1e-9)
  # 2008 after a 2007 fit: fat tails help.
  assert (out['models']['student_t_nu5']['standardised']['value']
          < out['models']['gaussian_fullcov']['standardised']['value'])


def test_baselines_shapes_and_fits(slice_ds):
  scen = mb.all_baselines(slice_ds, 64, seed=0)
  assert set(scen) == {'iid_gaussian', 'day_bootstrap', 'window_bootstrap', 'ccc_garch_t'}
  for x in scen.values():
    assert x.shape == (64, 20, 20) and np.all(np.isfinite(x))
  r = slice_ds.returns.values[slice_ds.train_days]
  rows = {tuple(v) for v in r}
  assert all(tuple(v) in rows for v in scen['day_bootstrap'].reshape(-1, 20))
  train_w = {w.tobytes() for w in slice_ds.train.x}
  assert all(w.tobytes() in train_w for w in scen['window_bootstrap'])
  g = mb.iid_gaussian(r, 2000, 20, 1)
  np.testing.assert_allclose(np.cov(g.reshape(-1, 20), rowvar=False), np.cov(r, rowvar=False),
                             atol=2e-5)
  model = mb.fit_ccc_garch_t(r)
  # arch keeps alpha + beta <= 1; one year of data puts some fits on that boundary.
  assert np.all(model.alpha + model.beta <= 1 + 1e-8) and np.all(model.nu > 2)
  assert model.converged.dtype == bool and model.converged.shape == (20,)
  assert np.allclose(np.diag(model.corr), 1) and model.sigma2_next.shape == r.shape
  sim = mb.simulate_ccc_garch_t(model, 500, 20, 3)
  assert sim.shape == (500, 20, 20)
  assert np.median(mm.excess_kurtosis(sim)) > 0.5
