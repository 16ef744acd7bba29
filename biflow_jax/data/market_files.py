"""A user's market file for `--mode=likelihood`: daily prices or daily log returns.

    read_returns(path, kind, assets) -> (dates (T,), log returns (T, A), source)

kind='prices': phase 1's `market.read_prices_csv` (a Date column plus one column of
closes per asset; NaN, non-positive prices, unknown or missing columns, bad or unsorted
dates are each one `market.MarketDataError` naming the file, line and column), then log
returns dated by the later close. kind='returns': the same layout holding natural-log
daily returns (`read_returns_csv`). Both then pass `check_calendar`: consecutive dates
more than MAX_GAP_DAYS calendar days apart mean missing trading days (the shipped file's
longest gap is 7 days, 2001-09-10 to 2001-09-17), and a window would silently span them.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biflow_jax.data import market

KINDS = ('prices', 'returns')
MAX_GAP_DAYS = 7
# |log return| above this (a 7.4x move in a day) is taken for a unit mistake (percent).
MAX_ABS_LOG_RETURN = 2.0


def check_calendar(dates: np.ndarray, path: str | os.PathLike, first_line: int = 2,
                   max_gap_days: int = MAX_GAP_DAYS) -> None:
  """MarketDataError naming the line after the first gap longer than `max_gap_days`.

  dates (T,) datetime64[D], increasing; line i of the file holds dates[i - first_line].
  """
  gaps = np.diff(np.asarray(dates, 'datetime64[D]')).astype(int)
  bad = np.flatnonzero(gaps > max_gap_days)
  if bad.size:
    i = int(bad[0])
    raise market.MarketDataError(
        path, f'dates jump from {dates[i]} to {dates[i + 1]} ({gaps[i]} calendar days): trading '
        'days are missing, and a 20-day window would span them', 'add the missing dates '
        f'(at most {max_gap_days} calendar days between rows) or split the file at the gap',
        i + 1 + first_line)


def _value(text: str, path: Path, line: int, column: str) -> float:
  text = text.strip()
  if not text or text.lower() in ('nan', 'na', 'n/a', 'null', 'none'):
    raise market.MarketDataError(path, 'the return is missing (NaN or empty)', 'fill it or '
                                 'drop the date for every asset', line, column)
  try:
    value = float(text)
  except ValueError:
    raise market.MarketDataError(path, f'cannot read return {text!r} as a number',
                                 'write plain decimal numbers', line, column) from None
  if not math.isfinite(value):
    raise market.MarketDataError(path, f'the return is not finite ({text})', 'replace it '
                                 'with the real log return', line, column)
  if abs(value) > MAX_ABS_LOG_RETURN:
    raise market.MarketDataError(path, f'log return {text} is a {math.exp(value):.3g}x move in '
                                 'one day', 'give natural-log daily returns (0.01 for about '
                                 '1%), not percent', line, column)
  return value


def read_returns_csv(path: str | os.PathLike, expected_assets: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(dates (T,), log returns (T, A) in `expected_assets` order, source) of a returns CSV.

  Raises market.MarketDataError for a missing file, no or two date columns, unknown or
  missing asset columns, a row of the wrong length, a missing/unreadable, duplicate or
  unsorted date, a missing, unreadable, infinite or implausible (percent) return.
  """
  path = Path(path)
  if not path.is_file():
    raise market.MarketDataError(path, 'the file does not exist', 'pass a CSV of daily log '
                                 'returns: a Date column plus one column per asset')
  expected = list(expected_assets)
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    date_cols = [i for i, h in enumerate(header) if h.lower() == 'date']
    if len(date_cols) != 1:
      raise market.MarketDataError(path, f'expected exactly one date column, found '
                                   f'{len(date_cols)} in header {header}', 'name the date '
                                   'column "Date" (once)', 1)
    dcol = date_cols[0]
    names = [h for i, h in enumerate(header) if i != dcol]
    unknown = [h for h in names if h not in expected]
    if unknown:
      raise market.MarketDataError(path, f'unknown asset column(s) {unknown}, expected only '
                                   f'{expected}', 'delete these columns', 1, unknown[0])
    missing = [a for a in expected if a not in names]
    if missing:
      raise market.MarketDataError(path, f'missing asset column(s) {missing}', 'add them', 1)
    if len(set(names)) != len(names):
      raise market.MarketDataError(path, 'an asset column appears twice', 'keep one column '
                                   'per asset', 1)
    order = [names.index(a) for a in expected]
    dates: list[np.datetime64] = []
    rows: list[list[float]] = []
    for cells in reader:
      line = reader.line_num
      if not cells or (len(cells) == 1 and not cells[0].strip()):
        continue
      if len(cells) != len(header):
        raise market.MarketDataError(path, f'the row has {len(cells)} fields, the header has '
                                     f'{len(header)}', 'give every row one date and one '
                                     'return per asset', line)
      date = market._parse_date(cells[dcol], path, line, header[dcol])  # pylint: disable=protected-access
      if dates and date <= dates[-1]:
        problem = 'duplicate date' if date == dates[-1] else f'date {date} comes after {dates[-1]}'
        raise market.MarketDataError(path, problem, 'keep one row per date, oldest first',
                                     line, header[dcol])
      values = [c for i, c in enumerate(cells) if i != dcol]
      rows.append([_value(values[j], path, line, names[j]) for j in order])
      dates.append(date)
  if not rows:
    raise market.MarketDataError(path, 'no return rows', 'write one line per day after the header')
  return (np.array(dates, 'datetime64[D]'), np.array(rows, np.float64),
          {'name': path.name, 'sha256': market._sha256(path), 'rows': len(rows)})  # pylint: disable=protected-access


def read_returns(path: str | os.PathLike, kind: str, expected_assets: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(dates (T,), daily log returns (T, A), source) of a prices or returns CSV (module doc)."""
  if kind not in KINDS:
    raise ValueError(f'config.likelihood.kind={kind!r} is not one of {KINDS}')
  if kind == 'prices':
    prices = market.read_prices_csv(path, expected_assets)
    check_calendar(prices.dates, path)
    r = np.log(prices.values[1:]) - np.log(prices.values[:-1])
    source = {k: v for k, v in prices.source.items() if k != 'path'}
    return prices.dates[1:], r, {**source, 'kind': 'prices'}
  dates, r, source = read_returns_csv(path, expected_assets)
  check_calendar(dates, path)
  return dates, r, {**source, 'kind': 'returns'}
