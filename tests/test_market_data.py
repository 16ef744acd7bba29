"""biflow_jax.data.market: shipped file, split sizes, windows, standardisation Jacobian,
volatility bins and every bad-input error. Uses a 2-year slice (2007 train, 2008
held-out); no network."""
import hashlib
import json
import math

import numpy as np
import pytest

from biflow_jax.data import market

ASSETS = ['AAPL', 'AMD', 'BAC', 'BBY', 'CVX', 'GE', 'HD', 'JNJ', 'JPM', 'KO', 'LLY', 'MRK',
          'MSFT', 'PEP', 'PFE', 'PG', 'RRC', 'UNH', 'WMT', 'XOM']


@pytest.fixture(scope='module')
def slice_ds():
  return market.load_dataset(start='2007-01-01', end='2008-12-31')


def test_shipped_file_matches_its_record():
  meta = market.shipped_metadata()
  digest = hashlib.sha256(market.SHIPPED_CSV.read_bytes()).hexdigest()
  assert digest == meta['sha256'] == (
      'ee21cac28befb1d0a739a9ceb22184f995394726aa0cfde9a21941d1ac04ac0d')
  assert meta['source']['version'] == '1.12.2' and meta['licence'] == 'BSD-3-Clause'
  assert (market.ASSET_DIR / meta['licence_file']).read_text().startswith('BSD 3-Clause')
  p = market.load_prices()
  assert p.values.shape == (meta['rows'], 20) == (8313, 20)
  assert list(p.assets) == ASSETS
  assert str(p.dates[0]) == meta['first_date'] == '1990-01-02'
  assert str(p.dates[-1]) == meta['last_date'] == '2022-12-28'
  assert p.source['version'] == 'skfolio 1.12.2'


def test_stale_runs_end_before_default_start():
  runs = market.stale_runs(market.load_prices())
  assert len(runs) == 26
  assert [r for r in runs if r[0] != 'RRC'] == [('JPM', '1991-08-30', '1991-09-06', 5)]
  assert runs[0] == ('RRC', '1990-01-03', '1990-04-09', 68)
  assert max(r[2] for r in runs) < market.DEFAULT_START


def test_log_returns_values_and_history():
  p = market.load_prices()
  r = market.log_returns(p, start=None)
  # AAPL closes 0.264 (1990-01-02) and 0.266 (1990-01-03).
  assert r.values[0, 0] == pytest.approx(math.log(0.266 / 0.264), rel=1e-12)
  assert str(r.dates[0]) == '1990-01-03'
  rd = market.log_returns(p)
  assert str(rd.dates[rd.first_used]) == '1994-01-03'
  assert rd.values.shape == r.values.shape  # earlier returns stay as history
  # RRC's -1.099 stale-price jump is before the default start.
  rrc = ASSETS.index('RRC')
  assert r.values[:, rrc].min() == pytest.approx(-1.0989, abs=1e-4)
  assert rd.values[rd.first_used:, rrc].min() > -0.5


def test_two_year_slice_split_sizes(slice_ds):
  sp = slice_ds.provenance['split']
  # NYSE traded 251 days in 2007 and 253 in 2008.
  assert sp['train_years'] == [2007] and sp['heldout_years'] == [2008]
  assert (sp['train_days'], sp['heldout_days']) == (251, 253)
  assert slice_ds.train.x.shape == (251 - 19, 20, 20)
  assert slice_ds.heldout.x.shape == (253 // 20, 20, 20)
  assert slice_ds.heldout_stride1.x.shape == (253 - 19, 20, 20)
  assert set(slice_ds.train.year) == {2007} and set(slice_ds.heldout.year) == {2008}


def test_interleaved_full_split_counts():
  ds = market.load_dataset()
  sp = ds.provenance['split']
  assert sp['heldout_years'] == [1996, 2000, 2004, 2008, 2012, 2016, 2020]
  assert 2008 not in sp['train_years'] and 2020 not in sp['train_years']
  assert sp['train_windows_stride1'] == 5116 and sp['heldout_windows_nonoverlapping'] == 84


def test_out_of_time_split():
  ds = market.load_dataset(split='out_of_time', start='2014-01-01', end='2015-12-31')
  assert ds.provenance['split']['train_years'] == [2014]
  assert ds.provenance['split']['heldout_years'] == [2015]
  assert ds.heldout.x.shape == (252 // 20, 20, 20)
  with pytest.raises(ValueError, match='unknown split'):
    market.split_masks(ds.returns.dates, 'random')


def test_windows_are_consecutive_returns_in_one_year_and_side(slice_ds):
  r = slice_ds.returns
  for w, mask in ((slice_ds.train, slice_ds.train_days), (slice_ds.heldout, slice_ds.test_days)):
    for i in range(len(w)):
      s = w.start[i]
      np.testing.assert_array_equal(w.x[i], r.values[s:s + 20])
      assert np.all(mask[s:s + 20])
      assert len(set(r.years[s:s + 20])) == 1
  # Non-overlapping held-out windows tile the year from its first day.
  assert np.all(np.diff(slice_ds.heldout.start) == 20)
  assert str(r.dates[slice_ds.heldout.start[0]]) == '2008-01-02'


def test_condition_is_log_trailing_equal_weight_vol(slice_ds):
  r = slice_ds.returns.values
  for i in (0, 7, len(slice_ds.train) - 1):
    s = slice_ds.train.start[i]
    p = r[s - 20:s].mean(axis=1)
    assert slice_ds.train.condition[i] == pytest.approx(math.log(math.sqrt(np.mean(p ** 2))),
                                                        rel=1e-10)


def _numerical_jacobian(f, x, eps=1e-6):
  flat = x.ravel()
  cols = []
  for k in range(flat.size):
    d = np.zeros_like(flat)
    d[k] = eps
    cols.append((f((flat + d).reshape(x.shape)) - f((flat - d).reshape(x.shape))).ravel()
                / (2 * eps))
  return np.stack(cols, axis=1)


@pytest.mark.parametrize('center', [False, True])
def test_standardizer_log_det_matches_numerical_jacobian(center):
  rng = np.random.default_rng(0)
  train = rng.normal(0.001, [0.01, 0.02, 0.05, 0.3], size=(500, 4))
  std = market.Standardizer.fit(train, center=center)
  x = rng.normal(0, 0.02, size=(3, 4))
  jac = _numerical_jacobian(std.forward, x)
  sign, logdet = np.linalg.slogdet(jac)
  assert sign > 0
  assert std.log_det_per_window(3) == pytest.approx(logdet, abs=1e-6)
  np.testing.assert_allclose(std.log_det(np.stack([x, x])), [logdet, logdet], atol=1e-6)
  np.testing.assert_allclose(std.inverse(std.forward(x)), x, atol=1e-15)
  assert np.all(std.mean == 0) != center


def test_raw_nll_is_standardised_nll_minus_log_det():
  # A standard normal density on z implies N(mean, scale^2) on the raw returns.
  from scipy import stats
  rng = np.random.default_rng(1)
  std = market.Standardizer.fit(rng.normal(0.002, [0.01, 0.03], size=(400, 2)), center=True)
  x = rng.normal(0, 0.02, size=(5, 3, 2))
  nll_std = -stats.norm.logpdf(std.forward(x)).sum(axis=(1, 2))
  nll_raw = -stats.norm.logpdf(x, std.mean, std.scale).sum(axis=(1, 2))
  np.testing.assert_allclose(std.raw_nll(nll_std, 3), nll_raw, rtol=1e-12)


def test_vol_bins_quantiles_percentiles_and_range(slice_ds):
  bins = slice_ds.vol_bins
  c = slice_ds.train.condition
  labels = slice_ds.class_labels(slice_ds.train)
  counts = np.bincount(labels, minlength=5)
  assert bins.k == 5 and counts.sum() == len(c)
  assert np.all(np.abs(counts - len(c) / 5) <= 1)
  assert list(bins.bin_of_percentile([0, 19.9, 50, 99.9, 100])) == [0, 0, 2, 4, 4]
  lo, hi = bins.train_range
  b, beyond = bins.bin_of_level([lo - 0.1, lo, hi, hi + 0.1])
  assert list(b) == [0, 0, 4, 4] and list(beyond) == [True, False, False, True]
  b2, _ = bins.bin_of_vol(np.exp(c[:10]))
  np.testing.assert_array_equal(b2, labels[:10])
  level = bins.level_of_percentile(95)
  assert bins.percentile_of_level(level) == pytest.approx(95, abs=100 / len(c) + 1e-9)
  with pytest.raises(ValueError):
    bins.bin_of_percentile(101)
  # Bins are fitted on training windows only: held-out 2008 is mostly beyond 2007's range.
  assert np.mean(bins.bin_of_level(slice_ds.heldout.condition)[1]) > 0.3


def test_provenance_names_data_split_and_limits(slice_ds):
  p = slice_ds.provenance
  assert p['data']['sha256'] == market.shipped_metadata()['sha256']
  assert p['data']['version'] == 'skfolio 1.12.2'
  assert p['split']['name'] == 'interleaved' and p['cleaning']['start'] == '2007-01-01'
  assert 'not investment advice' in p['disclaimer']
  assert 'liquidity' in p['not_modelled'] and 'arbitrage' in p['not_modelled']
  json.dumps(p, allow_nan=False)


# ----------------------------------------------------------------------------- bad input

HEADER = 'Date,AAA,BBB\n'


def _csv(tmp_path, body, header=HEADER, name='prices.csv'):
  path = tmp_path / name
  path.write_text(header + body)
  return path


def test_user_csv_loads_and_reorders(tmp_path):
  path = _csv(tmp_path, '2020-01-02,1.0,2.0\n2020-01-03,1.1,2.2\n')
  p = market.load_prices(path, expected_assets=['BBB', 'AAA'])
  assert p.assets == ('BBB', 'AAA')
  np.testing.assert_array_equal(p.values, [[2.0, 1.0], [2.2, 1.1]])
  assert len(p.source['sha256']) == 64


@pytest.mark.parametrize('body,line,column,words', [
    ('2020-01-02,1.0,2.0\n2020-01-03,1.0,nan\n', 3, 'BBB', 'missing'),
    ('2020-01-02,1.0,2.0\n2020-01-03,,2.0\n', 3, 'AAA', 'missing'),
    ('2020-01-02,1.0,2.0\n,1.0,2.0\n', 3, 'Date', 'date is missing'),
    ('2020-01-02,1.0,2.0\n\n,,\n', 4, 'Date', 'date is missing'),
    ('2020-01-02,1.0,2.0\n2020-13-03,1.0,2.0\n', 3, 'Date', 'cannot read date'),
    ('2020-01-03,1.0,2.0\n2020-01-02,1.0,2.0\n', 3, 'Date', 'not sorted'),
    ('2020-01-02,1.0,2.0\n2020-01-03,1.0,2.0\n2020-01-03,1.0,2.0\n', 4, 'Date', 'duplicate'),
    ('2020-01-02,1.0,2.0\n2020-01-03,0,2.0\n', 3, 'AAA', 'not positive'),
    ('2020-01-02,1.0,-2.0\n', 2, 'BBB', 'not positive'),
    ('2020-01-02,1.0,2.0\n2020-01-03,1.0,abc\n', 3, 'BBB', 'cannot read price'),
    ('2020-01-02,1.0,2.0\n2020-01-03,1.0\n', 3, None, 'fields'),
])
def test_bad_prices_csv_names_file_line_column_and_fix(tmp_path, body, line, column, words):
  path = _csv(tmp_path, body)
  with pytest.raises(market.MarketDataError) as e:
    market.load_prices(path)
  err = e.value
  assert isinstance(err, ValueError)
  assert (err.path, err.line, err.column) == (str(path), line, column)
  assert words in str(err) and str(path) in str(err) and 'Fix:' in str(err)


def test_unknown_and_missing_columns(tmp_path):
  path = _csv(tmp_path, '2020-01-02,1.0,2.0\n2020-01-03,1.0,2.0\n')
  with pytest.raises(market.MarketDataError, match=r"unknown asset column\(s\) \['BBB'\]") as e:
    market.load_prices(path, expected_assets=['AAA'])
  assert (e.value.line, e.value.column) == (1, 'BBB')
  with pytest.raises(market.MarketDataError, match=r"missing asset column\(s\) \['CCC'\]"):
    market.load_prices(path, expected_assets=['AAA', 'BBB', 'CCC'])
  no_date = _csv(tmp_path, '1.0,2.0\n', header='Day,AAA,BBB\n', name='nodate.csv')
  with pytest.raises(market.MarketDataError, match='date column'):
    market.load_prices(no_date)
  with pytest.raises(market.MarketDataError, match='does not exist'):
    market.load_prices(tmp_path / 'absent.csv')


def test_weights_files(tmp_path):
  assets = ['AAA', 'BBB', 'CCC']
  good = tmp_path / 'w.json'
  good.write_text('{"CCC": 0.5, "AAA": 0.25, "BBB": 0.25}')
  np.testing.assert_array_equal(market.load_weights(good, assets), [0.25, 0.25, 0.5])
  short = tmp_path / 'short.json'
  short.write_text('[0.5, 0.5]')
  with pytest.raises(market.MarketDataError, match='2 weights for 3 assets') as e:
    market.load_weights(short, assets)
  assert e.value.path == str(short) and 'Fix:' in str(e.value)
  unknown = tmp_path / 'unknown.json'
  unknown.write_text('{"AAA": 1, "ZZZ": 0, "BBB": 0, "CCC": 0}')
  with pytest.raises(market.MarketDataError, match='unknown asset') as e:
    market.load_weights(unknown, assets)
  assert e.value.column == 'ZZZ'
  long_csv = tmp_path / 'long.csv'
  long_csv.write_text('0.25\n0.25\n0.25\n0.25\n')
  with pytest.raises(market.MarketDataError, match='4 weight lines for 3 assets') as e:
    market.load_weights(long_csv, assets)
  assert e.value.line == 4
  bad = tmp_path / 'bad.csv'
  bad.write_text('AAA,0.5\nBBB,x\nCCC,0.5\n')
  with pytest.raises(market.MarketDataError, match='not a number') as e:
    market.load_weights(bad, assets)
  assert (e.value.line, e.value.column) == (2, 'BBB')
  zeros = tmp_path / 'zeros.json'
  zeros.write_text('[0, 0, 0]')
  with pytest.raises(market.MarketDataError, match='all weights are 0'):
    market.load_weights(zeros, assets)
