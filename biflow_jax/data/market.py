"""Multi-asset daily returns for market scenarios: loading, validation, split, windows,
standardisation (with its log-Jacobian) and the volatility-regime condition.

The default data is a copy of skfolio 1.12.2's `sp500_dataset.csv.gz` (BSD-3-Clause,
`biflow_jax/assets/market/`): adjusted daily closes of 20 S&P 500 stocks, 1990-01-02 to
2022-12-28, "for testing and example purposes only". The 20 names are today's survivors
picked with hindsight (survivorship bias: losses and dispersion are understated).

Pipeline (every array is float64, log returns are natural-log daily returns):

  prices (T+1, A)  --log_returns(start, end)-->  returns (T, A), dated by the later close
  split_masks(dates, split)  -->  train / test day masks (whole calendar years)
  windows(returns, mask, days, stride, lookback)  -->  x (n, days, A), year, condition
  Standardizer.fit(train days)  -->  z = (x - mean) / scale, log|det dz/dx| per window
  VolBins.fit(train conditions, k)  -->  class label of a volatility regime

Cleaning choice (the `start` argument, default 1994-01-01): the shipped file has stale
prices (runs of >= 5 unchanged closes) in RRC from 1990 to 1993 and in JPM in 1991, 90% of
RRC's 1990-91 returns are exactly 0, and RRC jumps by -1.099 on 1990-04-10 after a stale
run. A density model would put spikes on those zeros, so returns dated before 1994 are
dropped (`stale_runs` finds every such run; none remains after 1993). Winsorising was
not chosen because it would also clip real crashes (AAPL -0.73 on 2000-09-29), and
dropping RRC would break the 20-asset token. Returns before `start` are still used as
history for the trailing-volatility condition of the first windows.

Windows lie inside one calendar year and one side of the split, so every window belongs
to exactly one year (what the year-block bootstrap resamples) and no window straddles
train and held-out days. Held-out windows are non-overlapping (stride = days) unless
asked otherwise.

Errors in user files raise `MarketDataError` (a ValueError) naming the file, the line,
the column where relevant, and the fix.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ASSET_DIR = Path(__file__).resolve().parent.parent / 'assets' / 'market'
SHIPPED_CSV = ASSET_DIR / 'sp500_dataset.csv.gz'
SHIPPED_META = ASSET_DIR / 'sp500_dataset.json'

DEFAULT_START = '1994-01-01'
DEFAULT_DAYS = 20
DEFAULT_LOOKBACK = 20
DEFAULT_VOL_BINS = 5
HOLDOUT_EVERY = 4
OUT_OF_TIME_LAST_TRAIN_YEAR = 2014
SPLITS = ('interleaved', 'out_of_time')

NOT_MODELLED = ('No-arbitrage constraints and liquidity are not modelled: the data has '
                'no volume, option or rates data.')
NOT_ADVICE = 'Research output on stale example data; not investment advice.'


class MarketDataError(ValueError):
  """A user data file (prices CSV or portfolio weights) that cannot be used.

  Attributes: path, line (1-based file line, the header being line 1; None when the
  problem is the whole file), column (None when not about one column), problem, fix.
  """

  def __init__(self, path: str | os.PathLike, problem: str, fix: str,
               line: int | None = None, column: str | None = None):
    self.path, self.line, self.column = str(path), line, column
    self.problem, self.fix = problem, fix
    where = self.path
    if line is not None:
      where += f', line {line}'
    if column is not None:
      where += f', column {column!r}'
    super().__init__(f'{where}: {problem}. Fix: {fix}.')


@dataclasses.dataclass(frozen=True)
class Prices:
  """Daily closes. dates (T,) datetime64[D] strictly increasing; values (T, A) > 0."""
  dates: np.ndarray
  assets: tuple[str, ...]
  values: np.ndarray
  source: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Returns:
  """Daily log returns r_t = log(P_t / P_{t-1}), dated by day t.

  dates (T,), values (T, A). `first_used` is the index of the first return at or after
  the cleaning start: returns before it are history for the volatility condition only.
  """
  dates: np.ndarray
  assets: tuple[str, ...]
  values: np.ndarray
  first_used: int
  source: dict[str, Any]

  @property
  def years(self) -> np.ndarray:
    """(T,) int calendar year of each return."""
    return self.dates.astype('datetime64[Y]').astype(int) + 1970


@dataclasses.dataclass(frozen=True)
class Windows:
  """Windows of consecutive daily log returns.

  x (n, days, A) log returns; start (n,) index into the returns of each window's first
  day; year (n,) its calendar year; condition (n,) log trailing realised volatility of
  the equal-weight portfolio over the `lookback` days before the window (log of a daily
  standard deviation in log-return units; see `trailing_log_vol`).
  """
  x: np.ndarray
  start: np.ndarray
  year: np.ndarray
  condition: np.ndarray

  def __len__(self) -> int:
    return int(self.x.shape[0])

  def subset(self, index: np.ndarray) -> Windows:
    """The windows at `index` (an int or bool array)."""
    return Windows(self.x[index], self.start[index], self.year[index], self.condition[index])


# ----------------------------------------------------------------------------- loading


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _open_text(path: Path) -> io.TextIOBase:
  if path.suffix == '.gz':
    return gzip.open(path, 'rt', newline='')
  return open(path, newline='')


def _parse_date(text: str, path: Path, line: int, column: str) -> np.datetime64:
  text = text.strip()
  if not text:
    raise MarketDataError(path, 'the date is missing', 'give every row an ISO date '
                          'YYYY-MM-DD or delete the row', line, column)
  try:
    return np.datetime64(datetime.date.fromisoformat(text), 'D')
  except ValueError:
    raise MarketDataError(path, f'cannot read date {text!r}', 'write dates as ISO '
                          'YYYY-MM-DD', line, column) from None


def _parse_price(text: str, path: Path, line: int, column: str) -> float:
  text = text.strip()
  if not text or text.lower() in ('nan', 'na', 'n/a', 'null', 'none'):
    raise MarketDataError(path, 'the price is missing (NaN or empty)', 'fill the gap '
                          '(for example with the previous close) or drop the date for '
                          'every asset', line, column)
  try:
    value = float(text)
  except ValueError:
    raise MarketDataError(path, f'cannot read price {text!r} as a number',
                          'write prices as plain decimal numbers', line, column) from None
  if not math.isfinite(value):
    raise MarketDataError(path, f'the price is not finite ({text})', 'replace it with '
                          'the real close', line, column)
  if value <= 0:
    raise MarketDataError(path, f'the price {text} is not positive (log returns need '
                          'prices > 0)', 'use adjusted closes, which are positive, or '
                          'drop the asset', line, column)
  return value


def read_prices_csv(path: str | os.PathLike,
                    expected_assets: Sequence[str] | None = None) -> Prices:
  """Reads a prices CSV (optionally .gz): a `Date` column and one column per asset.

  The date column is the one whose header is 'date' in any case; dates are ISO
  YYYY-MM-DD and must be strictly increasing; every price must be a finite number > 0.
  With `expected_assets`, the asset columns must be exactly those names (any order);
  the result follows the order of `expected_assets`.

  Returns: Prices with values (T, A) float64.
  Raises: MarketDataError (a ValueError) for a missing date column, duplicate headers,
    unknown or missing asset columns, a row of the wrong length, a missing/unreadable,
    duplicate or unsorted date, a NaN/empty, unreadable, infinite or non-positive price,
    or fewer than 2 rows.
  """
  path = Path(path)
  if not path.is_file():
    raise MarketDataError(path, 'the file does not exist', 'pass the path of a prices '
                          'CSV (a Date column plus one column per asset)')
  with _open_text(path) as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise MarketDataError(path, 'the file is empty', 'write a header line '
                            '"Date,ASSET1,ASSET2,..." and one line per day') from None
    date_cols = [i for i, h in enumerate(header) if h.lower() == 'date']
    if len(date_cols) != 1:
      raise MarketDataError(path, f'expected exactly one date column, found '
                            f'{len(date_cols)} in header {header}', 'name the date '
                            'column "Date" (once)', 1)
    dcol = date_cols[0]
    names = [h for i, h in enumerate(header) if i != dcol]
    seen: set[str] = set()
    for h in names:
      if not h:
        raise MarketDataError(path, 'an asset column has an empty name', 'name every '
                              'column in the header', 1)
      if h in seen:
        raise MarketDataError(path, 'the asset column appears twice', 'keep one column '
                              'per asset', 1, h)
      seen.add(h)
    if expected_assets is not None:
      expected = list(expected_assets)
      unknown = [h for h in names if h not in expected]
      if unknown:
        raise MarketDataError(path, f'unknown asset column(s) {unknown}, expected '
                              f'only {expected}', 'delete these columns or add them '
                              'to the expected asset list', 1, unknown[0])
      missing = [a for a in expected if a not in names]
      if missing:
        raise MarketDataError(path, f'missing asset column(s) {missing}', 'add the '
                              'columns or remove them from the expected asset list', 1)
      order = [names.index(a) for a in expected]
    else:
      expected = names
      order = list(range(len(names)))
    if not names:
      raise MarketDataError(path, 'there are no asset columns', 'add one column of '
                            'prices per asset', 1)
    dates: list[np.datetime64] = []
    rows: list[list[float]] = []
    for cells in reader:
      line = reader.line_num
      if not cells or (len(cells) == 1 and not cells[0].strip()):
        continue  # a blank line; a line of empty fields is reported below
      if len(cells) != len(header):
        raise MarketDataError(path, f'the row has {len(cells)} fields, the header has '
                              f'{len(header)}', 'give every row one date and one price '
                              'per asset', line)
      date = _parse_date(cells[dcol], path, line, header[dcol])
      if dates and date == dates[-1]:
        raise MarketDataError(path, f'duplicate date {date}', 'keep one row per date',
                              line, header[dcol])
      if dates and date < dates[-1]:
        raise MarketDataError(path, f'date {date} comes after {dates[-1]} (dates are '
                              'not sorted)', 'sort the rows by date, oldest first', line,
                              header[dcol])
      values = [c for i, c in enumerate(cells) if i != dcol]
      rows.append([_parse_price(values[j], path, line, names[j]) for j in order])
      dates.append(date)
  if len(rows) < 2:
    raise MarketDataError(path, f'only {len(rows)} price row(s)', 'give at least two '
                          'dates (one return needs two closes)')
  return Prices(np.array(dates, 'datetime64[D]'), tuple(expected),
                np.array(rows, np.float64),
                {'name': path.name, 'path': str(path), 'sha256': _sha256(path),
                 'rows': len(rows)})


def shipped_metadata() -> dict[str, Any]:
  """The shipped file's record (source, version, licence, sha256, notes), as stored."""
  with open(SHIPPED_META) as f:
    return json.load(f)


def load_prices(path: str | os.PathLike | None = None,
                expected_assets: Sequence[str] | None = None) -> Prices:
  """Prices from a user CSV (`read_prices_csv`), or the shipped skfolio file if None.

  The shipped file's sha256 is checked against its JSON record, so a damaged copy is an
  error (MarketDataError) rather than silently different numbers.
  """
  if path is not None:
    return read_prices_csv(path, expected_assets)
  meta = shipped_metadata()
  prices = read_prices_csv(SHIPPED_CSV, expected_assets)
  if prices.source['sha256'] != meta['sha256']:
    raise MarketDataError(SHIPPED_CSV, f'sha256 {prices.source["sha256"]} differs from '
                          f'the recorded {meta["sha256"]}', 'reinstall biflow_jax (the '
                          'packaged copy is damaged)')
  source = dict(prices.source)
  source.update(name=meta['name'], version=f'skfolio {meta["source"]["version"]}',
                licence=meta['licence'], usage_note=meta['usage_note'],
                survivorship_bias=meta['survivorship_bias'])
  return dataclasses.replace(prices, source=source)


def load_weights(path: str | os.PathLike, assets: Sequence[str]) -> np.ndarray:
  """Portfolio weights (A,) in the order of `assets`, from a JSON or CSV file.

  JSON: a list of A numbers in asset order, or an object {asset: weight} naming every
  asset once. CSV/TXT: one weight per line, or `asset,weight` per line. Weights are used
  as given (no renormalisation; short positions allowed) but must be finite and not all 0.

  Raises: MarketDataError naming the file (and line) for a wrong count, unknown or
    missing asset names, a non-numeric or non-finite weight, or all-zero weights.
  """
  path = Path(path)
  assets = list(assets)
  n = len(assets)
  if not path.is_file():
    raise MarketDataError(path, 'the weights file does not exist', f'write {n} weights '
                          'as a JSON list or {"ASSET": weight} object')
  weights = np.full(n, np.nan)
  if path.suffix.lower() == '.json':
    try:
      with open(path) as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise MarketDataError(path, f'not valid JSON ({e.msg})', 'write a JSON list of '
                            f'{n} numbers', e.lineno) from None
    if isinstance(data, list):
      if len(data) != n:
        raise MarketDataError(path, f'{len(data)} weights for {n} assets {assets}',
                              f'give exactly {n} weights, in that asset order')
      for i, w in enumerate(data):
        weights[i] = _weight(w, path, None, assets[i])
    elif isinstance(data, dict):
      unknown = [k for k in data if k not in assets]
      if unknown:
        raise MarketDataError(path, f'unknown asset(s) {unknown}', f'use only the '
                              f'assets {assets}', None, unknown[0])
      missing = [a for a in assets if a not in data]
      if missing:
        raise MarketDataError(path, f'missing weight(s) for {missing}', 'give a weight '
                              '(0 is allowed) for every asset', None, missing[0])
      for i, a in enumerate(assets):
        weights[i] = _weight(data[a], path, None, a)
    else:
      raise MarketDataError(path, f'JSON holds a {type(data).__name__}', 'write a list '
                            'of numbers or an {"ASSET": weight} object')
  else:
    with open(path, newline='') as f:
      lines = [(i + 1, row) for i, row in enumerate(csv.reader(f))
               if row and any(c.strip() for c in row)]
    if len(lines) != n:
      bad = lines[n][0] if len(lines) > n else None
      raise MarketDataError(path, f'{len(lines)} weight lines for {n} assets {assets}',
                            f'write exactly {n} lines, one weight per asset', bad)
    named = all(len(row) == 2 for _, row in lines)
    for i, (line, row) in enumerate(lines):
      if named:
        name = row[0].strip()
        if name not in assets:
          raise MarketDataError(path, f'unknown asset {name!r}', f'use only the assets '
                                f'{assets}', line, name)
        j = assets.index(name)
        if not np.isnan(weights[j]):
          raise MarketDataError(path, f'asset {name!r} appears twice', 'give each asset '
                                'one line', line, name)
        weights[j] = _weight(row[1], path, line, name)
      elif len(row) == 1:
        weights[i] = _weight(row[0], path, line, assets[i])
      else:
        raise MarketDataError(path, f'{len(row)} fields on the line', 'write "weight" '
                              'or "asset,weight" per line', line)
  if not np.any(weights != 0):
    raise MarketDataError(path, 'all weights are 0', 'give at least one non-zero weight')
  return weights


def _weight(value: Any, path: Path, line: int | None, asset: str) -> float:
  try:
    w = float(value.strip() if isinstance(value, str) else value)
  except (TypeError, ValueError):
    raise MarketDataError(path, f'weight {value!r} is not a number', 'write plain '
                          'decimal numbers', line, asset) from None
  if not math.isfinite(w):
    raise MarketDataError(path, f'weight {value!r} is not finite', 'write finite '
                          'numbers', line, asset)
  return w


# ------------------------------------------------------------------- cleaning, returns


def stale_runs(prices: Prices, min_run: int = 5) -> list[tuple[str, str, str, int]]:
  """Runs of >= `min_run` consecutive unchanged closes of one asset.

  Returns [(asset, first date of the run's zero returns, last date, length)] in time
  order. On the shipped file with min_run=5: 25 runs in RRC (1990-1993) and one in JPM
  (1991), none after 1993 (hence DEFAULT_START).
  """
  same = prices.values[1:] == prices.values[:-1]
  runs = []
  for j, asset in enumerate(prices.assets):
    col = np.concatenate([[False], same[:, j], [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(col))
    for a, b in zip(edges[::2], edges[1::2]):
      if b - a >= min_run:
        runs.append((asset, str(prices.dates[a + 1]), str(prices.dates[b]), int(b - a)))
  runs.sort(key=lambda r: (r[1], r[0]))
  return runs


def log_returns(prices: Prices, start: str | None = DEFAULT_START,
                end: str | None = None) -> Returns:
  """Daily log returns (T, A) of `prices`, kept up to `end` (inclusive, ISO date).

  Returns dated before `start` are kept only as history (`first_used` marks the first
  used one); None keeps everything. Raises ValueError if nothing is left in range.
  """
  r = np.log(prices.values[1:]) - np.log(prices.values[:-1])
  dates = prices.dates[1:]
  keep = np.ones(len(dates), bool)
  if end is not None:
    keep &= dates <= np.datetime64(end, 'D')
  r, dates = r[keep], dates[keep]
  first = 0 if start is None else int(np.searchsorted(dates, np.datetime64(start, 'D')))
  if first >= len(dates):
    raise ValueError(f'no returns between start={start} and end={end} '
                     f'(data ends {prices.dates[-1]})')
  source = dict(prices.source, cleaning={
      'start': start, 'end': end, 'first_return': str(dates[first]),
      'last_return': str(dates[-1]),
      'choice': 'returns dated before `start` dropped (kept as volatility history); '
                'no winsorising; all assets kept'})
  return Returns(dates, prices.assets, r, first, source)


# ------------------------------------------------------------------- split and windows


def split_masks(dates: np.ndarray, split: str = 'interleaved') -> tuple[np.ndarray, np.ndarray]:
  """(train, test) boolean day masks (T,) of whole calendar years.

  'interleaved': test = years divisible by 4 (1992, 1996, ..., 2008, ..., 2020), the
  rest train. 'out_of_time': train = years <= 2014, test = 2015 onwards.
  Raises ValueError for another name.
  """
  years = dates.astype('datetime64[Y]').astype(int) + 1970
  if split == 'interleaved':
    test = years % HOLDOUT_EVERY == 0
  elif split == 'out_of_time':
    test = years > OUT_OF_TIME_LAST_TRAIN_YEAR
  else:
    raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
  return ~test, test


def trailing_log_vol(returns: np.ndarray, starts: np.ndarray,
                     lookback: int = DEFAULT_LOOKBACK) -> np.ndarray:
  """Log trailing realised volatility before each window start, (n,).

  c = log sqrt(mean_{t=s-lookback}^{s-1} p_t^2), p_t = mean over assets of r_t (the
  equal-weight portfolio's daily log return, uncentred as usual for realised
  volatility). The equal-weight portfolio rather than the mean of per-asset
  volatilities, because it also moves with correlation, which rises in stress, and is
  the portfolio the default loss metric uses. Units: log of daily log-return std.
  Raises ValueError if a start has fewer than `lookback` days of history or the
  trailing volatility is 0 (constant prices).
  """
  starts = np.asarray(starts, np.int64)
  if np.any(starts < lookback):
    raise ValueError(f'window start(s) {starts[starts < lookback][:5]} have fewer than '
                     f'lookback={lookback} days of history')
  p2 = np.concatenate([[0.0], np.cumsum(returns.mean(axis=1) ** 2)])
  var = (p2[starts] - p2[starts - lookback]) / lookback
  var = np.maximum(var, 0.0)  # cumsum differences can round to -1e-20
  if np.any(var <= 0):
    raise ValueError('trailing volatility is 0 before window(s) starting at index '
                     f'{starts[var <= 0][:5]} (constant prices)')
  return 0.5 * np.log(var)


def windows(returns: Returns, mask: np.ndarray, days: int = DEFAULT_DAYS,
            stride: int = 1, lookback: int = DEFAULT_LOOKBACK) -> Windows:
  """Windows of `days` consecutive returns inside one calendar year of `mask`.

  Only returns at or after `returns.first_used` are used; each window also needs
  `lookback` earlier returns (any split) for its condition. Windows start at the first
  usable day of each year and then every `stride` days, so stride=days gives
  floor(usable days / days) non-overlapping windows per year.
  Returns Windows with x (n, days, A).
  """
  if days < 2 or stride < 1:
    raise ValueError(f'need days >= 2 and stride >= 1, got days={days}, stride={stride}')
  years = returns.years
  idx = np.arange(len(years))
  usable = mask & (idx >= returns.first_used) & (idx >= lookback)
  starts = []
  for y in np.unique(years[usable]):
    days_y = idx[usable & (years == y)]
    # A year's usable days are contiguous (masks are whole years), bar the cut at start.
    first, last = days_y[0], days_y[-1]
    starts.extend(range(first, last - days + 2, stride))
  starts = np.array(starts, np.int64)
  if len(starts) == 0:
    x = np.zeros((0, days, len(returns.assets)))
    return Windows(x, starts, starts.copy(), np.zeros(0))
  x = returns.values[starts[:, None] + np.arange(days)]
  return Windows(x, starts, years[starts], trailing_log_vol(returns.values, starts, lookback))


# ------------------------------------------------------------------- standardisation


@dataclasses.dataclass(frozen=True)
class Standardizer:
  """z = (r - mean) / scale per asset, fitted on training days.

  scale (A,) the per-asset std of training daily log returns (ddof=0); mean (A,) zero
  unless fitted with center=True. For a window of `days` x A returns the Jacobian is
  diagonal, so log|det dz/dr| = -days * sum(log scale), the same for every window, and

    NLL(raw window) = NLL(standardised window) - log|det dz/dr|   (nats per window),

  i.e. per dimension: NLL_raw/D = NLL_std/D + mean(log scale), D = days * A.
  """
  scale: np.ndarray
  mean: np.ndarray

  @classmethod
  def fit(cls, train_returns: np.ndarray, center: bool = False) -> Standardizer:
    """Fits on (T, A) training daily log returns. ValueError if an asset has std 0."""
    r = np.asarray(train_returns, np.float64)
    scale = r.std(axis=0)
    if np.any(~np.isfinite(scale) | (scale <= 0)):
      raise ValueError(f'training std must be finite and > 0 per asset, got {scale}')
    mean = r.mean(axis=0) if center else np.zeros(r.shape[1])
    return cls(scale, mean)

  def forward(self, x: np.ndarray) -> np.ndarray:
    """(..., A) log returns -> standardised (..., A)."""
    return (np.asarray(x) - self.mean) / self.scale

  def inverse(self, z: np.ndarray) -> np.ndarray:
    """(..., A) standardised -> log returns (..., A)."""
    return np.asarray(z) * self.scale + self.mean

  def log_det_per_window(self, days: int) -> float:
    """log|det dz/dr| of one (days, A) window, nats."""
    return float(-days * np.sum(np.log(self.scale)))

  def log_det(self, x: np.ndarray) -> np.ndarray:
    """(n,) log|det dz/dr| of each window of x (n, days, A), nats."""
    x = np.asarray(x)
    return np.full(x.shape[0], self.log_det_per_window(x.shape[1]))

  def raw_nll(self, nll_standardised: np.ndarray, days: int) -> np.ndarray:
    """Per-window NLL (nats) of raw log returns from that of standardised windows."""
    return np.asarray(nll_standardised) - self.log_det_per_window(days)

  def to_dict(self) -> dict[str, list[float]]:
    return {'scale': self.scale.tolist(), 'mean': self.mean.tolist()}


# ------------------------------------------------------------------- volatility regime


@dataclasses.dataclass(frozen=True)
class VolBins:
  """K quantile bins of the log trailing volatility, fitted on training windows.

  edges (K-1,) interior edges: the k/K quantiles of the training conditions, so each
  bin holds ~1/K of the training windows; bin(c) = number of edges <= c, in 0..K-1.
  train_sorted (n,) the sorted training conditions (for percentiles and the range).
  """
  edges: np.ndarray
  train_sorted: np.ndarray

  @classmethod
  def fit(cls, train_condition: np.ndarray, k: int = DEFAULT_VOL_BINS) -> VolBins:
    c = np.sort(np.asarray(train_condition, np.float64))
    if k < 1 or len(c) < k:
      raise ValueError(f'need 1 <= k <= number of training windows, got k={k}, n={len(c)}')
    edges = np.quantile(c, np.arange(1, k) / k)
    return cls(edges, c)

  @property
  def k(self) -> int:
    return len(self.edges) + 1

  @property
  def train_range(self) -> tuple[float, float]:
    return float(self.train_sorted[0]), float(self.train_sorted[-1])

  def bin_of_level(self, condition: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(bin, beyond) for log-vol level(s): bin in 0..K-1 (int), beyond True where the
    level lies outside the training range (extrapolation: the model never saw it)."""
    c = np.asarray(condition, np.float64)
    lo, hi = self.train_range
    return np.searchsorted(self.edges, c, side='right'), (c < lo) | (c > hi)

  def bin_of_vol(self, daily_vol: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """As `bin_of_level` for a daily volatility (std of log returns, not its log)."""
    return self.bin_of_level(np.log(np.asarray(daily_vol, np.float64)))

  def level_of_percentile(self, percentile: np.ndarray | float) -> np.ndarray:
    """Training log-vol level at `percentile` in [0, 100] (linear interpolation)."""
    p = np.asarray(percentile, np.float64)
    if np.any((p < 0) | (p > 100)):
      raise ValueError(f'percentile must be in [0, 100], got {percentile}')
    return np.quantile(self.train_sorted, p / 100)

  def bin_of_percentile(self, percentile: np.ndarray | float) -> np.ndarray:
    """Bin of the training percentile(s) in [0, 100]: floor(p/100 * K), capped at K-1."""
    p = np.asarray(percentile, np.float64)
    if np.any((p < 0) | (p > 100)):
      raise ValueError(f'percentile must be in [0, 100], got {percentile}')
    return np.minimum((p / 100 * self.k).astype(int), self.k - 1)

  def percentile_of_level(self, condition: np.ndarray | float) -> np.ndarray:
    """Percentage of training windows with a condition <= the level(s)."""
    c = np.asarray(condition, np.float64)
    return 100 * np.searchsorted(self.train_sorted, c, side='right') / len(self.train_sorted)

  def to_dict(self) -> dict[str, Any]:
    lo, hi = self.train_range
    return {'k': self.k, 'edges': self.edges.tolist(), 'train_min': lo, 'train_max': hi}


# ------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True)
class MarketDataset:
  """Everything phase 2 trains and evaluates on, for one split.

  returns: all daily log returns (history included); train (n, days, A) windows at
    stride 1; heldout non-overlapping held-out windows (stride = days); heldout_stride1
    all held-out windows at stride 1; train_days / test_days (T,) day masks of used
    returns; standardizer; vol_bins; provenance (a JSON-able dict for every output).
  """
  returns: Returns
  split: str
  days: int
  train: Windows
  heldout: Windows
  heldout_stride1: Windows
  train_days: np.ndarray
  test_days: np.ndarray
  standardizer: Standardizer
  vol_bins: VolBins
  provenance: dict[str, Any]

  @property
  def assets(self) -> tuple[str, ...]:
    return self.returns.assets

  def class_labels(self, w: Windows) -> np.ndarray:
    """(n,) volatility-regime class label (bin) of each window."""
    return self.vol_bins.bin_of_level(w.condition)[0]


def load_dataset(path: str | os.PathLike | None = None, split: str = 'interleaved',
                 days: int = DEFAULT_DAYS, start: str | None = DEFAULT_START,
                 end: str | None = None, center: bool = False,
                 vol_bins: int = DEFAULT_VOL_BINS, lookback: int = DEFAULT_LOOKBACK,
                 expected_assets: Sequence[str] | None = None) -> MarketDataset:
  """Loads prices (shipped file if `path` is None) and builds the split's windows.

  Raises MarketDataError for a bad user file, ValueError for an unknown split or a
  range that leaves no training or no held-out window.
  """
  prices = load_prices(path, expected_assets)
  returns = log_returns(prices, start, end)
  train_mask, test_mask = split_masks(returns.dates, split)
  used = np.arange(len(returns.dates)) >= returns.first_used
  train_days, test_days = train_mask & used, test_mask & used
  train = windows(returns, train_mask, days, 1, lookback)
  heldout = windows(returns, test_mask, days, days, lookback)
  heldout1 = windows(returns, test_mask, days, 1, lookback)
  if len(train) == 0 or len(heldout) == 0:
    raise ValueError(f'split {split!r} over {returns.source["cleaning"]} leaves '
                     f'{len(train)} training and {len(heldout)} held-out windows of '
                     f'{days} days; widen start/end')
  std = Standardizer.fit(returns.values[train_days], center)
  bins = VolBins.fit(train.condition, vol_bins)
  years = returns.years
  provenance = {
      'data': {k: v for k, v in prices.source.items() if k != 'path'},
      'cleaning': returns.source['cleaning'],
      'assets': list(returns.assets),
      'split': {
          'name': split,
          'rule': ('held-out = calendar years divisible by 4' if split == 'interleaved'
                   else f'train <= {OUT_OF_TIME_LAST_TRAIN_YEAR} < held-out'),
          'train_years': sorted({int(y) for y in years[train_days]}),
          'heldout_years': sorted({int(y) for y in years[test_days]}),
          'train_days': int(train_days.sum()), 'heldout_days': int(test_days.sum()),
          'days_per_window': days, 'train_windows_stride1': len(train),
          'heldout_windows_nonoverlapping': len(heldout),
          'heldout_windows_stride1': len(heldout1)},
      'standardisation': {'center': center, **std.to_dict(),
                          'log_det_per_window': std.log_det_per_window(days)},
      'condition': {'definition': 'log sqrt(mean of squared equal-weight daily log '
                                  f'returns over the {lookback} days before the window)',
                    'lookback': lookback, 'bins': bins.to_dict()},
      'not_modelled': NOT_MODELLED,
      'disclaimer': NOT_ADVICE,
  }
  return MarketDataset(returns, split, days, train, heldout, heldout1, train_days,
                       test_days, std, bins, provenance)
