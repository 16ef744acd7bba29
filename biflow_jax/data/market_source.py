"""Market windows as the training job's data (`config.data.source='market'`).

A market config carries a `market` group (`default_config`): the prices file, split,
window length, cleaning start, volatility bins, whitening. From it this module builds
(once per process and group) phase 1's `market.MarketDataset` and the `ModelSpace` fitted
on its training days, and hands the input pipeline float arrays already in model space:

    values (n, days, 1, A) float32   F's NHWC input (H = days, W = 1, C = assets), so with
                                     patch_size 1 every token is one day of A numbers
    label  (n,) int32                the volatility-regime bin of the window (phase 1's
                                     `class_labels`: trailing 20-day equal-weight vol)

The 'train' part is the training windows at stride 1; the 'heldout' part, which the
training loop scores periodically, is the held-out windows at stride 1 (the 84
non-overlapping ones are fewer than a batch; `--mode=eval` scores those).

Errors: `MarketConfigError` (a ValueError) names the config field that disagrees with
the data and the value to set, before anything compiles.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np

from biflow_jax.data import market, market_space

PARTS = ('train', 'heldout', 'heldout_nonoverlapping', 'validation')


class MarketConfigError(ValueError):
  """A market config whose fields disagree with each other or with the data."""


def default_config() -> ml_collections.ConfigDict:
  """The `config.market` group with its defaults (configs/market_sp500.py)."""
  return ml_collections.ConfigDict(dict(
      prices='',                  # prices CSV (Date + one column per asset); '' = shipped skfolio file
      split='interleaved',        # interleaved (every 4th year held out) | out_of_time (2015-2022)
      days=market.DEFAULT_DAYS,   # window length = model.image_size (one token per day)
      start=market.DEFAULT_START, # first return used ('' = all; earlier ones are vol history)
      end='',                     # last return used ('' = all)
      vol_bins=10,                # volatility-regime classes = model.num_classes
      lookback=market.DEFAULT_LOOKBACK,  # days of trailing vol behind each window's label
      whiten=True,                # PCA-whiten each day after standardising (market_space.py)
      # Tuning without touching the held-out years: these training years (comma-separated,
      # e.g. '2001,2009,2017') leave the training windows and become the 'validation' part,
      # which the training loop then scores periodically instead of the held-out years.
      validation_years='',
  ))


@dataclasses.dataclass(frozen=True)
class MarketData:
  """The dataset (phase 1) and the model space fitted on its training days."""
  dataset: market.MarketDataset
  space: market_space.ModelSpace
  validation: market.Windows | None = None  # stride-1 windows of market.validation_years

  @property
  def assets(self) -> tuple[str, ...]:
    return self.dataset.assets

  def windows(self, part: str) -> market.Windows:
    """Windows of a part: 'train' (stride 1), 'heldout' (stride 1), 'heldout_nonoverlapping'."""
    if part == 'train':
      return self.dataset.train
    if part == 'heldout':
      return self.dataset.heldout_stride1
    if part == 'heldout_nonoverlapping':
      return self.dataset.heldout
    if part == 'validation':
      if self.validation is None:
        raise ValueError("the 'validation' part needs config.market.validation_years")
      return self.validation
    raise ValueError(f'unknown market part {part!r}; use one of {PARTS}')

  def to_model(self, x: np.ndarray) -> np.ndarray:
    """(n, days, A) raw log returns -> F's input (n, days, 1, A) float32."""
    return self.space.forward(x)[:, :, None, :].astype(np.float32)

  def from_model(self, values: np.ndarray) -> np.ndarray:
    """(n, days, A) or (n, days, 1, A) model space -> (n, days, A) raw log returns."""
    u = np.asarray(values, np.float64)
    if u.ndim == 4:
      u = u[:, :, 0, :]
    return self.space.inverse(u)

  def provenance(self) -> dict[str, Any]:
    """Phase 1's provenance plus the model space (every output carries it)."""
    return {**self.dataset.provenance, 'model_space': self.space.to_dict(),
            'log_det_model_space_per_window': self.space.log_det_per_window(self.dataset.days)}


def _opt(text: str) -> str | None:
  return text or None


def _years(text: str) -> tuple[int, ...]:
  try:
    return tuple(sorted({int(y) for y in text.split(',') if y.strip()}))
  except ValueError:
    raise MarketConfigError(f'config.market.validation_years={text!r} must be comma-separated '
                            "years, e.g. '2001,2009,2017'") from None


@functools.lru_cache(maxsize=4)
def _load(prices: str, split: str, days: int, start: str, end: str, vol_bins: int,
          lookback: int, whiten: bool, validation_years: tuple[int, ...]) -> MarketData:
  ds = market.load_dataset(_opt(prices), split=split, days=days, start=_opt(start),
                           end=_opt(end), vol_bins=vol_bins, lookback=lookback)
  validation = None
  if validation_years:
    # The standardisation, whitening and bin edges stay those of all training days: a
    # validation year leaks only those few scalars, and the held-out years nothing.
    in_val = np.isin(ds.train.year, validation_years)
    if not in_val.any() or in_val.all():
      raise MarketConfigError(f'config.market.validation_years={list(validation_years)} must '
                              f'be some but not all of the training years '
                              f'{sorted(set(ds.train.year.tolist()))}')
    validation = ds.train.subset(in_val)
    ds = dataclasses.replace(ds, train=ds.train.subset(~in_val))
  space = market_space.ModelSpace.fit(ds.returns.values[ds.train_days], ds.standardizer, whiten)
  return MarketData(ds, space, validation)


def check_config(config: ml_collections.ConfigDict) -> None:
  """MarketConfigError unless the model's shape and classes fit the market group."""
  if 'market' not in config:
    raise MarketConfigError("config.data.source='market' needs a config.market group: start "
                            'from configs/market_sp500.py (market_source.default_config())')
  mk, m = config.market, config.model
  if mk.split not in market.SPLITS:
    raise MarketConfigError(f'config.market.split={mk.split!r} is not one of {market.SPLITS}')
  want = {'model.image_size': (m.image_size, mk.days), 'model.image_width': (
      m.get('image_width', 0), 1), 'model.patch_size': (m.patch_size, 1)}
  for field, (got, need) in want.items():
    if got != need:
      raise MarketConfigError(f'config.{field}={got} but market windows are (days, 1, assets) '
                              f'with one token per day: set config.{field}={need} '
                              f'(config.market.days={mk.days})')
  if m.num_classes not in (0, mk.vol_bins):
    raise MarketConfigError(f'config.model.num_classes={m.num_classes} but the volatility regime '
                            f'has config.market.vol_bins={mk.vol_bins} classes: set them equal '
                            '(or num_classes=0 for an unconditional model)')


def load(config: ml_collections.ConfigDict) -> MarketData:
  """The market data of a config (cached per market group); checks the model against it."""
  check_config(config)
  mk = config.market
  data = _load(str(mk.prices), str(mk.split), int(mk.days), str(mk.start or ''),
               str(mk.end or ''), int(mk.vol_bins), int(mk.lookback), bool(mk.whiten),
               _years(str(mk.get('validation_years', ''))))
  a = len(data.assets)
  if config.model.in_channels != a:
    raise MarketConfigError(f'config.model.in_channels={config.model.in_channels} but the prices '
                            f'have {a} assets: set config.model.in_channels={a}')
  return data


def arrays(config: ml_collections.ConfigDict, part: str) -> tuple[np.ndarray, np.ndarray]:
  """(values (n, days, 1, A) float32 in model space, labels (n,) int32) of a part."""
  data = load(config)
  if part == 'heldout' and data.validation is not None:
    part = 'validation'  # tuning: never score the held-out years
  w = data.windows(part)
  labels = data.dataset.class_labels(w).astype(np.int32)
  return data.to_model(w.x), labels
