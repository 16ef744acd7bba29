"""What every market mode shares: the restored run, its data, scenarios and outputs.

`restore(config, workdir)` gives a `MarketRun`: the experiment and EMA weights of the
latest checkpoint, the market data (phase 1's dataset and the model space), the jitted
samplers (inference/market_sampling.py), and the header every output carries (data
version, sha256, split, checkpoint, what is not modelled, not investment advice).

Units: scenarios are raw daily log returns (n, days, A); NLLs are nats per window in
model space unless a name says otherwise (`nll_units` converts with the Jacobians of
standardisation and whitening, data/market_space.py).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from scipy.special import logsumexp

from biflow_jax.data import market, market_source
from biflow_jax.evaluation import market_metrics
from biflow_jax.inference import market_sampling
from biflow_jax.runtime import files
from biflow_jax.training import restore as restore_lib
from biflow_jax.training.experiment import Experiment


@dataclasses.dataclass
class MarketRun:
  """A trained market run, ready to sample and score (module doc)."""
  config: ml_collections.ConfigDict
  workdir: Path
  exp: Experiment
  params: Any                     # EMA weights {'forward': ..., 'reverse': ...}
  step: int
  data: market_source.MarketData
  samplers: market_sampling.MarketSamplers

  @property
  def dataset(self) -> market.MarketDataset:
    return self.data.dataset

  @property
  def num_classes(self) -> int:
    return int(self.config.model.num_classes)

  @property
  def dims(self) -> int:
    days, a = self.samplers.shape
    return days * a

  def header(self) -> dict[str, Any]:
    """Provenance and caveats that head every market output."""
    p = self.data.provenance()
    return {
        'data': {'name': p['data'].get('name'), 'version': p['data'].get('version', 'user file'),
                 'sha256': p['data'].get('sha256'), 'rows': p['data'].get('rows')},
        'split': {k: p['split'][k] for k in ('name', 'rule', 'heldout_years')},
        'cleaning': p['cleaning'],
        'assets': p['assets'],
        'checkpoint': {'workdir': str(self.workdir), 'step': self.step, 'weights': 'EMA'},
        'model': {'base': self.config.model.base, 'nu': float(self.config.model.nu),
                  'vol_bins': self.num_classes, 'noise_sigma': float(
                      self.config.objective.noise_sigma)},
        'not_modelled': market.NOT_MODELLED,
        'disclaimer': market.NOT_ADVICE,
        'written': datetime.datetime.now().isoformat(timespec='seconds'),
    }

  def label_frequencies(self) -> np.ndarray:
    """(K,) share of training windows in each volatility bin (about 1/K each)."""
    labels = self.dataset.class_labels(self.dataset.train)
    return np.bincount(labels, minlength=self.num_classes) / len(labels)

  def marginal_labels(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) bins drawn with the training frequencies: sampling them gives the model's
    unconditional distribution (a mixture over regimes); -1 when unconditional."""
    if not self.num_classes:
      return np.full(n, -1, np.int32)
    return rng.choice(self.num_classes, n, p=self.label_frequencies()).astype(np.int32)

  def scenarios(self, decoder: str, labels: np.ndarray, seed: int, temperature: float = 1.0,
                batch: int = 1000) -> np.ndarray:
    """(n, days, A) raw log returns of G ('reverse') or F's exact inverse ('exact') for
    the given labels (n,), from the base noise of `seed` scaled by `temperature`."""
    z = np.asarray(self.samplers.noise(jax.random.PRNGKey(seed), len(labels), temperature))
    return self.data.from_model(self.decode(decoder, z, labels, batch))

  def decode(self, decoder: str, z: np.ndarray, labels: np.ndarray,
             batch: int = 1000) -> np.ndarray:
    """(n, days, A) model-space windows of z (n, days, A) by G or F's exact inverse."""
    if decoder == 'reverse':
      if self.samplers.generate is None:
        raise ValueError("decoder 'reverse' needs G: this config has config.reverse.enabled=False")
      fn = lambda zb, yb: self.samplers.generate(self.params, zb, yb)
    elif decoder == 'exact':
      fn = lambda zb, yb: self.samplers.exact(self.params, zb, yb)
    else:
      raise ValueError(f"market decoders are 'reverse' (G) and 'exact' (F^-1), not {decoder!r}")
    return market_sampling.in_batches(fn, np.asarray(z, np.float32),
                                      np.asarray(labels, np.int32), batch=batch)

  def log_prob(self, u: np.ndarray, labels: np.ndarray, batch: int = 1000) -> np.ndarray:
    """(n,) log p_F(u | label) in nats per window of model-space windows u (n, days, A)."""
    fn = lambda ub, yb: self.samplers.log_prob(self.params['forward'], ub, yb)
    return market_sampling.in_batches(fn, np.asarray(u, np.float32),
                                      np.asarray(labels, np.int32), batch=batch)

  def nll(self, x: np.ndarray, labels: np.ndarray, batch: int = 1000) -> dict[str, np.ndarray]:
    """Per-window NLL of raw windows x (n, days, A) in model-space nats per window:
    'conditional' given each window's label, and 'marginal' = -log sum_k pi_k p(x | k)
    over the K bins with their training shares pi_k (the unconditional density)."""
    u = self.data.space.forward(x)
    out = {'conditional': -self.log_prob(u, labels, batch)}
    if self.num_classes:
      lp = np.stack([self.log_prob(u, np.full(len(u), k, np.int32), batch)
                     for k in range(self.num_classes)], axis=1)
      with np.errstate(divide='ignore'):
        out['marginal'] = -logsumexp(lp + np.log(self.label_frequencies())[None], axis=1)
    else:
      out['marginal'] = out['conditional']
    return out

  def nll_units(self, nll_model: np.ndarray) -> dict[str, np.ndarray]:
    """Model-space nats per window -> nats/dim of raw log returns, of standardised returns
    and of the model space itself (each with the Jacobian of every preprocessing step)."""
    days, d = self.dataset.days, self.dims
    space = self.data.space
    return {'raw_per_dim': space.raw_nll(nll_model, days) / d,
            'standardised_per_dim': space.standardised_nll(nll_model, days) / d,
            'model_space_per_dim': np.asarray(nll_model) / d}


def restore(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
            denoise: str = 'none') -> MarketRun:
  """The latest checkpoint of a market run (EMA weights) with its data and samplers.

  Raises market_source.MarketConfigError for a config that does not fit its data and
  FileNotFoundError when workdir has no checkpoint, both before anything compiles.
  """
  data = market_source.load(config)
  exp, state, step = restore_lib.restore_run(config, workdir)
  return MarketRun(config, Path(workdir), exp, state.ema, int(step), data,
                   market_sampling.make(config, denoise))


def portfolio_weights(path: str, data: market_source.MarketData) -> tuple[np.ndarray, str]:
  """(weights (A,), description): equal weight for '', else market.load_weights(path)."""
  if not path:
    return market_metrics.equal_weights(len(data.assets)), 'equal weight'
  return market.load_weights(path, data.assets), f'weights file {path}'


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
  """(fn(*args, **kwargs), seconds), the result blocked until ready."""
  t = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return out, time.perf_counter() - t


def load_average() -> dict[str, float]:
  """The machine's 1/5/15-minute load averages and CPU count (timings depend on them)."""
  one, five, fifteen = os.getloadavg()
  return {'load_1m': one, 'load_5m': five, 'load_15m': fifteen, 'cpus': os.cpu_count() or 0}


def write_json(path: Path, obj: Any) -> Path:
  """JSON with numpy types made plain and no NaN/inf (`files.json_text`), atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  text = files.json_text(obj, str(path), indent=1) + '\n'
  files.write_text_atomic(path, text)
  return path
