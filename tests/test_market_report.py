"""market_report on the 2-year slice (2007 train, 2008 held-out): PASS/FAIL, non-finite
handling, JSON/Markdown/PNG output, bad arguments."""
import json
import math

import numpy as np
import pytest

from biflow_jax.data import market
from biflow_jax.evaluation import market_baselines as mb
from biflow_jax.evaluation import market_report as mr


@pytest.fixture(scope='module')
def slice_ds():
  return market.load_dataset(start='2007-01-01', end='2008-12-31')


def test_report_json_markdown_plots(slice_ds, tmp_path):
  rng = np.random.default_rng(0)
  gauss = mb.iid_gaussian(slice_ds.returns.values[slice_ds.train_days], 80, 20, rng)
  gauss[3, 4, 5] = np.nan  # one broken window is dropped and counted
  flat = np.zeros((40, 20, 20))  # constant scenarios: undefined correlations -> non-finite
  wild = gauss[:40].copy()
  wild[0] = 800.0  # finite returns whose portfolio value overflows: no VaR, no backtest
  model_nll = np.full(len(slice_ds.heldout), 1.0)
  with np.errstate(all='ignore'):
    rep = mr.build_report({'gauss': gauss, 'flat': flat, 'wild': wild}, slice_ds,
                          nll={'model': model_nll}, n_boot=10)
  assert math.isnan(rep['sets']['wild']['facts']['es975']['value'])
  assert math.isnan(rep['sets']['wild']['facts']['es975']['lo'])
  assert 'backtest_1d_var99' not in rep['sets']['wild']
  assert rep['sets']['wild']['bars']['es975'] == 'FAIL (non-finite)'
  assert rep['sets']['gauss']['n_nonfinite_dropped'] == 1
  assert rep['sets']['gauss']['n_windows'] == 79
  assert rep['sets']['gauss']['bars']['kurtosis_median'] == 'FAIL'
  assert rep['sets']['real_train']['bars']['es975'] == 'n/a'
  assert rep['sets']['flat']['bars']['mean_corr'] == 'FAIL (non-finite)'
  assert rep['nll']['models']['model']['status'] == 'PASS'
  paths = mr.write_report(rep, tmp_path)
  text = paths['json'].read_text()
  data = json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} in JSON'))
  assert data['sets']['flat']['facts']['mean_corr']['value'].startswith('non-finite (nan)')
  assert data['provenance']['data']['sha256'] == market.shipped_metadata()['sha256']
  md = paths['md'].read_text()
  assert market.shipped_metadata()['sha256'] in md and 'not investment advice' in md
  assert 'liquidity' in md and "split `interleaved`".lower() in md.lower()
  for name in mr.PLOTS:
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='reserved'):
    mr.build_report({'real_train': gauss}, slice_ds, n_boot=0)
  with pytest.raises(ValueError, match='expected'):
    mr.build_report({'bad': gauss[:, :10]}, slice_ds, n_boot=0)
  with pytest.raises(ValueError, match='per-window NLL'):
    mr.build_report({}, slice_ds, nll={'m': np.ones(3)}, n_boot=0)


def test_bar_rules():
  bars = {b.metric: b for b in mr.BARS}
  assert bars['acf_r_lag1'].check(-0.05) == 'PASS' and bars['acf_r_lag1'].check(0.06) == 'FAIL'
  assert bars['kurtosis_median'].check(12.0) == 'PASS'
  assert bars['kurtosis_median'].check(2.9) == 'FAIL'
  assert bars['es975'].check(0.119, 0.1) == 'PASS' and bars['es975'].check(0.121, 0.1) == 'FAIL'
  assert bars['leverage_lag1'].check(0.0) == 'FAIL'
  assert bars['nn_distance'].check(float('nan')) == 'FAIL (non-finite)'
