"""`--mode=likelihood` for a market config: how unusual each 20-day window of a CSV is.

Input: config.likelihood.input, a CSV of daily prices (config.likelihood.kind='prices')
or natural-log daily returns ('returns') with a Date column and one column per asset of
the run (data/market_files.py; a bad file is one MarketDataError naming file, line and
column, raised before anything is restored).

Every window of `days` consecutive returns with `lookback` returns before it (stride 1)
is scored by F (EMA weights, no noise added): NLL in nats per dimension of the raw log
returns (the Jacobians of standardisation and whitening included), given the window's
volatility bin (from the trailing returns in the same file; beyond the training range is
flagged) and marginal over bins. Its percentile is the share of training windows (stride
1) that F finds more likely: 99 means rarer than 99% of the training windows.

Writes DIR/likelihood/<name>.csv (one row per window) and <name>.json (provenance,
reference quantiles, the most unusual windows).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from biflow_jax.data import market, market_files, market_source
from biflow_jax.evaluation import market_metrics as mm
from biflow_jax.modes import market_run
from biflow_jax.runtime import files


def windows_of(dates: np.ndarray, r: np.ndarray, days: int, lookback: int, path: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(starts (n,), windows (n, days, A), log trailing vol (n,)) of every scoreable window."""
  starts = np.arange(lookback, len(r) - days + 1)
  if starts.size == 0:
    raise market.MarketDataError(path, f'{len(r)} daily returns are too few', f'give at least '
                                 f'{lookback + days} returns ({lookback + days + 1} price rows): '
                                 f'{lookback} days of history before a {days}-day window')
  x = r[starts[:, None] + np.arange(days)]
  return starts, x, market.trailing_log_vol(r, starts, lookback)


def run(config, workdir: str | os.PathLike) -> Path:
  """Scores config.likelihood.input; returns the CSV path."""
  lk = config.likelihood
  if not lk.input:
    raise ValueError('--mode=likelihood needs config.likelihood.input: a CSV of daily prices '
                     "(config.likelihood.kind='prices') or log returns ('returns') with a Date "
                     'column and one column per asset')
  data = market_source.load(config)
  kind = lk.get('kind', 'prices')
  dates, r, source = market_files.read_returns(lk.input, kind, data.assets)
  ds = data.dataset
  lookback = int(config.market.lookback)
  starts, x, level = windows_of(dates, r, ds.days, lookback, lk.input)
  bins, beyond = ds.vol_bins.bin_of_level(level)
  mr = market_run.restore(config, workdir)
  labels = bins.astype(np.int32) if mr.num_classes else np.full(len(x), -1, np.int32)
  nll = {k: mr.nll_units(v)['raw_per_dim'] for k, v in mr.nll(x, labels).items()}
  train = ds.train
  ref = {k: np.sort(mr.nll_units(v)['raw_per_dim']) for k, v in mr.nll(
      train.x, ds.class_labels(train).astype(np.int32)).items()}
  pct = {k: 100 * np.searchsorted(ref[k], nll[k], side='left') / len(ref[k]) for k in nll}
  loss = mm.portfolio_losses(x)
  name = lk.name or Path(lk.input).stem
  out = Path(workdir) / 'likelihood'
  out.mkdir(parents=True, exist_ok=True)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['start', 'end', 'trailing_daily_vol', 'bin', 'beyond_training_range',
                   'nll_raw_per_dim_given_bin', 'percentile_vs_train_given_bin',
                   'nll_raw_per_dim_marginal', 'percentile_vs_train_marginal', 'ew_loss_20d'])
  for i, s in enumerate(starts):
    writer.writerow([str(dates[s]), str(dates[s + ds.days - 1]), f'{np.exp(level[i]):.6f}',
                     int(bins[i]), bool(beyond[i]), f'{nll["conditional"][i]:.6f}',
                     f'{pct["conditional"][i]:.2f}', f'{nll["marginal"][i]:.6f}',
                     f'{pct["marginal"][i]:.2f}', f'{loss[i]:.6f}'])
  files.write_text_atomic(out / f'{name}.csv', buf.getvalue())
  order = np.argsort(-nll['marginal'])[:10]
  summary: dict[str, Any] = {
      **mr.header(), 'input': {**source, 'path': str(lk.input)},
      'windows': int(len(x)), 'days': ds.days, 'lookback': lookback,
      'units': 'nats per dimension of raw daily log returns (standardisation and whitening '
               'Jacobians included); percentile = share of training windows F finds more likely',
      'reference_train_quantiles': {k: {f'p{q}': float(np.quantile(v, q / 100))
                                        for q in (1, 50, 99)} for k, v in ref.items()},
      'windows_beyond_training_range': int(beyond.sum()),
      'most_unusual': [{'start': str(dates[starts[i]]), 'end': str(dates[starts[i] + ds.days - 1]),
                        'nll_marginal': float(nll['marginal'][i]),
                        'percentile_marginal': float(pct['marginal'][i]),
                        'nll_given_bin': float(nll['conditional'][i]),
                        'percentile_given_bin': float(pct['conditional'][i]),
                        'bin': int(bins[i]), 'beyond_training_range': bool(beyond[i]),
                        'ew_loss_20d': float(loss[i])} for i in order]}
  market_run.write_json(out / f'{name}.json', summary)
  return out / f'{name}.csv'
