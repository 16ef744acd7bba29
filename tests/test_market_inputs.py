"""Bad inputs to the market modes: each is one clear error naming the file and the row (or
the config field), raised before any checkpoint is read or anything compiles (the
workdirs here hold no run at all)."""
import json

import numpy as np
import pytest

from biflow_jax.data import market, market_files
from biflow_jax.modes import market as market_modes
from market_util import tiny_market_config

ASSETS = market.load_prices().assets


def _prices_csv(path, rows=60, edit=None, header=None):
  """A valid prices CSV of `rows` business days; edit(lines) may break it."""
  dates = np.busday_offset('2020-01-01', np.arange(rows), roll='forward')
  lines = [header or 'Date,' + ','.join(ASSETS)]
  rng = np.random.default_rng(0)
  prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (rows, len(ASSETS))), axis=0))
  lines += [f'{d},' + ','.join(f'{p:.3f}' for p in row) for d, row in zip(dates, prices)]
  if edit:
    edit(lines)
  path.write_text('\n'.join(lines) + '\n')
  return path


def _likelihood(tmp_path, csv, kind='prices'):
  config = tiny_market_config()
  config.likelihood.input, config.likelihood.kind = str(csv), kind
  market_modes.mode('likelihood')(config, str(tmp_path / 'no_run'))


def _set(line: int, column: int, value: str):
  def edit(lines):
    cells = lines[line - 1].split(',')
    cells[column] = value
    lines[line - 1] = ','.join(cells)
  return edit


@pytest.mark.parametrize('name,edit,match', [
    ('nan', _set(7, 3, 'NaN'), r'line 7, column .BAC.: the price is missing'),
    ('empty_date', _set(9, 0, ''), r'line 9, column .Date.: the date is missing'),
    ('negative', _set(12, 5, '-3.5'), r'line 12, column .CVX.: the price -3.5 is not positive'),
    ('zero', _set(4, 1, '0'), r'line 4, column .AAPL.: the price 0 is not positive'),
    ('gap', lambda lines: lines.__delitem__(slice(20, 30)), r'line 21: dates jump from'),
    ('unsorted', lambda lines: lines.insert(5, lines.pop(8)), r'line 7, .*not sorted'),
])
def test_a_bad_prices_csv_names_the_file_and_line(tmp_path, name, edit, match):
  csv = _prices_csv(tmp_path / f'{name}.csv', edit=edit)
  with pytest.raises(market.MarketDataError, match=match) as err:
    _likelihood(tmp_path, csv)
  assert str(csv) in str(err.value) and 'Fix:' in str(err.value)


def test_unknown_and_missing_columns_are_named(tmp_path):
  csv = _prices_csv(tmp_path / 'extra.csv', header='Date,' + ','.join(ASSETS[:-1]) + ',TSLA')
  with pytest.raises(market.MarketDataError, match=r"line 1, column 'TSLA': unknown asset"):
    _likelihood(tmp_path, csv)


def test_too_short_a_file_says_how_many_rows_it_needs(tmp_path):
  csv = _prices_csv(tmp_path / 'short.csv', rows=30)
  with pytest.raises(market.MarketDataError, match=r'short.csv: 29 daily returns are too few.*41 price rows'):
    _likelihood(tmp_path, csv)


def test_a_bad_returns_csv_names_the_file_and_line(tmp_path):
  lines = ['Date,' + ','.join(ASSETS)]
  dates = np.busday_offset('2020-01-01', np.arange(50), roll='forward')
  lines += [f'{d},' + ','.join(['0.001'] * len(ASSETS)) for d in dates]
  bad = list(lines)
  bad[10] = bad[10].replace('0.001', 'nan', 1)
  (tmp_path / 'nan.csv').write_text('\n'.join(bad) + '\n')
  with pytest.raises(market.MarketDataError, match=r"nan.csv, line 11, column 'AAPL': the return is missing"):
    _likelihood(tmp_path, tmp_path / 'nan.csv', 'returns')
  pct = list(lines)
  pct[3] = pct[3].replace('0.001', '2.5', 1)  # percent, not a log return
  (tmp_path / 'pct.csv').write_text('\n'.join(pct) + '\n')
  with pytest.raises(market.MarketDataError, match=r'line 4, .*not percent'):
    _likelihood(tmp_path, tmp_path / 'pct.csv', 'returns')
  with pytest.raises(ValueError, match="kind='logs' is not one of"):
    market_files.read_returns(tmp_path / 'pct.csv', 'logs', ASSETS)


@pytest.mark.parametrize('mode,group', [('stress', 'stress'), ('eval', 'market_eval')])
@pytest.mark.parametrize('content,suffix,match', [
    (json.dumps([0.05] * 19), '.json', '19 weights for 20 assets'),
    ('\n'.join(['0.05'] * 21), '.csv', '21 weight lines for 20 assets'),
])
def test_a_weights_file_of_the_wrong_length_is_named(tmp_path, mode, group, content, suffix, match):
  path = tmp_path / f'w{suffix}'
  path.write_text(content)
  config = tiny_market_config()
  config[group].weights = str(path)
  with pytest.raises(market.MarketDataError, match=match) as err:
    market_modes.mode(mode)(config, str(tmp_path / 'no_run'))
  assert str(path) in str(err.value)


@pytest.mark.parametrize('field,value,match', [
    ('methods', 'tail_noise,crash', 'unknown'),
    ('temperatures', '1.2,abc', 'comma-separated numbers'),
    ('levels', '0.99,1.5', r'levels=.*give numbers in'),
    ('reverse_quantile', 1.0, 'must be in'),
])
def test_bad_stress_fields_are_named(tmp_path, field, value, match):
  config = tiny_market_config()
  config.stress[field] = value
  with pytest.raises(ValueError, match=f'config.stress.{field}.*{match}|{match}'):
    market_modes.mode('stress')(config, str(tmp_path / 'no_run'))


def test_a_market_run_has_only_two_decoders_and_needs_a_checkpoint(tmp_path):
  config = tiny_market_config()
  config.sample.decoder = 'fixed_point'
  with pytest.raises(ValueError, match="config.sample.decoder='fixed_point'"):
    market_modes.mode('sample')(config, str(tmp_path))
  config.sample.decoder = 'reverse'
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    market_modes.mode('sample')(config, str(tmp_path / 'empty'))
  assert not (tmp_path / 'empty').exists()  # nothing created
