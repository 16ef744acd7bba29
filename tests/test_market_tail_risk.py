"""biflow_jax.evaluation.tail_risk (VaR/ES, importance weights, ESS) and block_bootstrap."""
import numpy as np
import pytest
from scipy import stats

from biflow_jax.evaluation import block_bootstrap, tail_risk


def test_var_es_by_hand():
  losses = np.arange(1.0, 101.0)
  # alpha 0.95: VaR = 95 (F(95) = 0.95); ES = mean of 96..100 = 98.
  assert tail_risk.var_es(losses, 0.95) == pytest.approx((95.0, 98.0))
  # alpha 0.975: VaR = 98; ES = [(99 + 100)/100 + 98 (0.98 - 0.975)] / 0.025 = 99.2
  # (Acerbi-Tasche: the atom at VaR counts for the missing 0.5%).
  assert tail_risk.var_es(np.random.default_rng(0).permutation(losses), 0.975) == \
      pytest.approx((98.0, 99.2))


def test_weighted_var_es_by_hand():
  losses = np.array([4.0, 1.0, 3.0, 2.0])
  p = np.array([0.4, 0.1, 0.3, 0.2])
  # S(1) = 0.9, S(2) = 0.7, S(3) = 0.4 <= 0.5 -> VaR50 = 3; ES50 = 3 + 0.4 (4 - 3) / 0.5 = 3.8.
  assert tail_risk.var_es(losses, 0.5, np.log(p)) == pytest.approx((3.0, 3.8))
  # Scaling all weights leaves the self-normalised estimate unchanged.
  assert tail_risk.var_es(losses, 0.5, np.log(p) + 7) == pytest.approx((3.0, 3.8))
  # Zero log-weights = plain Monte Carlo, both normalisations.
  x = np.random.default_rng(1).standard_normal(1000)
  plain = tail_risk.var_es(x, 0.99)
  assert tail_risk.var_es(x, 0.99, np.zeros(1000)) == pytest.approx(plain)
  assert tail_risk.var_es(x, 0.99, np.zeros(1000), self_normalised=False) == pytest.approx(plain)


@pytest.mark.parametrize('self_normalised', [True, False])
def test_importance_sampling_recovers_normal_tail(self_normalised):
  rng = np.random.default_rng(0)
  shift = 2.5
  x = rng.normal(shift, 1.0, 100_000)
  lw = stats.norm.logpdf(x) - stats.norm.logpdf(x, shift)
  var, es = tail_risk.var_es(x, 0.999, lw, self_normalised)
  z = stats.norm.ppf(0.999)
  assert var == pytest.approx(z, abs=0.02)
  assert es == pytest.approx(stats.norm.pdf(z) / 0.001, abs=0.02)
  p = tail_risk.tail_probability(x, 3.0, lw, self_normalised)
  assert p == pytest.approx(stats.norm.sf(3.0), rel=0.03)


def test_effective_sample_size():
  assert tail_risk.effective_sample_size(np.zeros(50)) == pytest.approx(50)
  # Weights 1, 1, 2: (1 + 1 + 2)^2 / (1 + 1 + 4) = 16 / 6.
  assert tail_risk.effective_sample_size(np.log([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)
  assert tail_risk.effective_sample_size(np.r_[0.0, -800.0, -800.0]) == pytest.approx(1.0)


def test_bad_inputs():
  with pytest.raises(ValueError):
    tail_risk.var_es(np.array([1.0, np.nan]), 0.9)
  with pytest.raises(ValueError):
    tail_risk.var_es(np.array([1.0, 2.0]), 1.0)
  with pytest.raises(ValueError):
    tail_risk.var_es(np.array([1.0, 2.0]), 0.5, np.zeros(3))


def test_block_bootstrap_resamples_whole_groups():
  groups = np.repeat([2000, 2004, 2008], [3, 2, 4])
  for idx in block_bootstrap.resample_indices(groups, 20, seed=1):
    picked = groups[idx]
    for g in np.unique(picked):
      # Each drawn group comes with all its members (a multiple of the group size).
      assert np.sum(picked == g) % np.sum(groups == g) == 0
  values = np.arange(9.0)
  r = block_bootstrap.interval(lambda i: values[i].mean(), groups, 200, 0.9, 0)
  assert r['value'] == pytest.approx(4.0) and r['lo'] <= 4.0 <= r['hi']
  assert r['n_groups'] == 3
  one = block_bootstrap.interval(lambda i: values[i].mean(), np.zeros(9), 50, 0.9, 0)
  assert one['lo'] == one['hi'] == pytest.approx(4.0)


def test_var_es_interval_groups():
  rng = np.random.default_rng(0)
  losses = rng.standard_normal(400)
  r = tail_risk.var_es_interval(losses, 0.95, np.repeat(np.arange(8), 50), 200)
  assert r['var']['lo'] <= r['var']['value'] <= r['var']['hi']
  assert r['es']['lo'] <= r['es']['value'] <= r['es']['hi']
  assert r['es']['value'] > r['var']['value'] and r['es']['n_groups'] == 8
