"""`--mode=eval` for a market config: phase 1's report for the model's scenarios.

One report (evaluation/market_report.py: JSON without NaN, Markdown, four PNGs) in
DIR/market_eval/ with these sets, all raw daily log returns (n, days, A):

- `G`: config.market_eval.num_samples scenarios of G in one pass, regimes drawn with
  their training shares (the model's unconditional distribution);
- `F_exact`: config.market_eval.exact_samples of F's exact inverse, same regimes;
- the in-tree baselines (iid Gaussian, day and window bootstrap, CCC-GARCH(1,1)-t),
  fitted on the training days;
- `real_heldout`, `real_train` (added by the report).

Held-out likelihood of F over the non-overlapping held-out windows, nats/dim with the
Jacobian of standardisation and whitening: given each window's volatility bin (known
before the window) and marginal over the bins (the unconditional density, comparable
with the iid baselines' bar). Speed: scenarios per second of G and of the exact
inverse, measured in this one run at the same batch size after a compile call, with the
machine's load average beside them.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from biflow_jax.data import market_source
from biflow_jax.evaluation import market_baselines, market_report
from biflow_jax.modes import market_run


def _speed(mr: market_run.MarketRun, decoder: str, n: int, batch: int) -> dict[str, Any]:
  """Scenarios per second of a decoder over n draws (after one compile call)."""
  fn = mr.samplers.generate if decoder == 'reverse' else mr.samplers.exact
  z = mr.samplers.noise(jax.random.PRNGKey(123), batch)
  y = np.zeros(batch, np.int32)
  _, compile_s = market_run.timed(fn, mr.params, z, y)
  calls = max(1, n // batch)
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn(mr.params, z, y))
  seconds = time.perf_counter() - start
  return {'scenarios_per_s': calls * batch / seconds, 'batch': batch, 'calls': calls,
          'seconds': seconds, 'first_call_s_incl_compile': compile_s}


def heldout_nll(mr: market_run.MarketRun) -> dict[str, Any]:
  """Per-window NLL (standardised nats/dim, the report's units) of the non-overlapping
  held-out windows: conditional on the window's bin and marginal over bins."""
  held = mr.dataset.heldout
  labels = mr.dataset.class_labels(held).astype(np.int32)
  nll = mr.nll(held.x, labels)
  out = {f'F ({name})': mr.nll_units(v)['standardised_per_dim'] for name, v in nll.items()}
  return out


def run(config, workdir: str | os.PathLike) -> Path:
  """Writes DIR/market_eval/market_report.{json,md} and PNGs; returns the Markdown path."""
  e = config.market_eval
  data = market_source.load(config)
  weights, weights_text = market_run.portfolio_weights(e.weights, data)  # bad files fail here
  started = time.time()
  load_before = market_run.load_average()
  mr = market_run.restore(config, workdir, config.sample.denoise)
  rng = np.random.default_rng(config.seed)
  sets: dict[str, np.ndarray] = {}
  timing: dict[str, Any] = {}
  if config.reverse.enabled:
    timing['G (1 NFE)'] = _speed(mr, 'reverse', e.num_samples, e.batch)
    sets['G'] = mr.scenarios('reverse', mr.marginal_labels(rng, e.num_samples), config.seed,
                             batch=e.batch)
  timing['F exact inverse'] = _speed(mr, 'exact', min(e.exact_samples, e.batch), e.batch)
  sets['F_exact'] = mr.scenarios('exact', mr.marginal_labels(rng, e.exact_samples),
                                 config.seed + 1, batch=e.batch)
  if 'G (1 NFE)' in timing:
    timing['speedup_G_over_exact'] = (timing['G (1 NFE)']['scenarios_per_s']
                                      / timing['F exact inverse']['scenarios_per_s'])
  nll = heldout_nll(mr)
  sets.update(market_baselines.all_baselines(mr.dataset, e.baselines, config.seed,
                                             garch=e.garch))
  meta = {**mr.header(), 'command': ' '.join(sys.argv), 'portfolio': weights_text,
          'samples': {'G': e.num_samples if 'G' in sets else 0, 'F_exact': e.exact_samples,
                      'baselines': e.baselines, 'labels': 'drawn with training shares'},
          'speed': timing, 'load_before': load_before}
  report = market_report.build_report(sets, mr.dataset, nll=nll, weights=weights,
                                      n_boot=e.n_boot, seed=config.seed, meta=meta)
  report['meta']['seconds'] = round(time.time() - started, 1)
  report['meta']['load_after'] = market_run.load_average()
  paths = market_report.write_report(report, Path(workdir) / 'market_eval')
  return paths['md']
