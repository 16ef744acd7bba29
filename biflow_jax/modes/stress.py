"""`--mode=stress` (market configs): stress tests that say what probability they carry.

Writes DIR/stress/stress_report.json (allow_nan=False) and stress_report.md. Every
number is about the portfolio of config.stress.weights ('' = equal weight): its
20-day buy-and-hold loss L = -sum_a w_a (exp(sum_t r_ta) - 1) and its 1-day loss
(fractions of portfolio value, positive = money lost). Methods (config.stress.methods):

- tail_noise: G's scenarios from z scaled by T (config.stress.temperatures), the founding
  document's "amplified tail events". Beside every row: the base log-density it costs,
  (T^2 - 1) d / 2 nats for the Gaussian (88 at T = 1.2, d = 400) and the drop measured
  on the draws. These are what-ifs with no probability attached.
- condition: G at the volatility regime of training percentiles of trailing volatility
  (config.stress.percentiles) and at the regimes before October 2008 and March 2020;
  a level beyond the training range is flagged (its bin is the top one: the model cannot
  extrapolate past what it saw).
- importance: VaR/ES at config.stress.levels by importance sampling in z (mean shift
  along the loss gradient, weights p(z)/q(z), effective sample size), checked against
  plain Monte Carlo of config.stress.mc_check draws (bootstrap intervals for both).
- reverse: the worst plausible scenario per regime: max L(G(z)) s.t. z in the base's
  q-HDR (|z|^2 <= chi2_d(q) for the Gaussian), its log-likelihood under F (nats/dim of
  raw log returns, with the Jacobian), where F puts its latent, and the nearest
  historical window (date, distance, its loss).
- backtest: the conditional 1-day VaR99 (bin of the trailing 20-day volatility before
  each held-out day -> VaR99 of G's first-day losses at that bin) against every held-out
  day: Kupiec POF, Christoffersen independence and conditional coverage, Basel traffic
  light per 250 days; the unconditional model beside it.
Every section also places the realised October 2008 and March 2020 20-day losses in
its distributions (share of scenarios losing at least as much).

Scenarios come from G (1 NFE); a config without G uses F's exact inverse (slow).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax.data import market, market_source
from biflow_jax.evaluation import backtest, market_metrics as mm, market_stress, tail_risk
from biflow_jax.models import base_density
from biflow_jax.modes import market_run
from biflow_jax.runtime import files

METHODS = ('tail_noise', 'condition', 'importance', 'reverse', 'backtest')
CRISES = (('October 2008', '2008-10'), ('March 2020', '2020-03'))
REPORT_LEVELS = (0.95, 0.975, 0.99)


def _floats(text: str, field: str, lo: float, hi: float, open_lo: bool = False) -> list[float]:
  try:
    values = [float(v) for v in str(text).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'config.stress.{field}={text!r} must be comma-separated numbers') from None
  bad = [v for v in values if not (lo < v if open_lo else lo <= v) or not v <= hi]
  if not values or bad:
    raise ValueError(f'config.stress.{field}={text!r}: give numbers in '
                     f'{"(" if open_lo else "["}{lo:g}, {hi:g}], got {bad or "none"}')
  return values


def parse(config) -> dict[str, Any]:
  """The stress group's values, checked; ValueError naming the field before anything loads."""
  st = config.stress
  methods = [m.strip() for m in str(st.methods).split(',') if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if not methods or unknown:
    raise ValueError(f'config.stress.methods={st.methods!r}: use a comma-separated subset of '
                     f'{METHODS} (unknown: {unknown})')
  for field in ('num', 'mc_check', 'reverse_steps'):
    if int(st[field]) < 1:
      raise ValueError(f'config.stress.{field}={st[field]} must be positive')
  if not 0 < float(st.reverse_quantile) < 1:
    raise ValueError(f'config.stress.reverse_quantile={st.reverse_quantile} must be in (0, 1)')
  return {'methods': methods,
          'temperatures': _floats(st.temperatures, 'temperatures', 0.0, 10.0, open_lo=True),
          'percentiles': _floats(st.percentiles, 'percentiles', 0.0, 100.0),
          'levels': _floats(st.levels, 'levels', 0.5, 0.99999, open_lo=True)}


# ------------------------------------------------------------------------ shared pieces


class _Ctx:
  """The run, the portfolio and the sampler every method uses."""

  def __init__(self, mr: market_run.MarketRun, weights: np.ndarray, config):
    self.mr, self.w, self.st = mr, weights, config.stress
    self.seed = int(self.st.seed)
    self.decoder = 'reverse' if mr.samplers.generate is not None else 'exact'
    self.loss_u = market_stress.portfolio_loss_fn(mr.data.space, weights)
    self.days, self.assets = mr.samplers.shape
    self.crises = crisis_windows(mr.dataset, weights)

  def draw(self, labels: np.ndarray, seed: int, temperature: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """(z (n, days, A) unit-temperature draws, raw scenarios of temperature * z)."""
    z = np.asarray(self.mr.samplers.noise(jax.random.PRNGKey(seed), len(labels)))
    u = self.mr.decode(self.decoder, temperature * z, labels)
    return z, self.mr.data.from_model(u)

  def generate_fn(self, label: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """z (k, days, A) -> model-space u (k, days, A) by G at one label (jax, differentiable)."""
    gen, params = self.mr.samplers.generator, self.mr.params

    def fn(z, labels=None):
      y = labels if labels is not None else jnp.full((z.shape[0],), label, jnp.int32)
      w = jnp.zeros((z.shape[0],), jnp.float32)
      return gen.apply({'params': params['reverse']}, z, y if gen.num_classes else None, w)[0]

    return fn

  def summary(self, x: np.ndarray) -> dict[str, Any]:
    """Tail numbers of scenarios x (n, days, A) and where the crises fall in them."""
    ok = np.all(np.isfinite(x), axis=(1, 2))
    x = x[ok]
    l20 = mm.portfolio_losses(x, self.w)
    l1 = mm.daily_portfolio_losses(x[:, 0], self.w)
    out: dict[str, Any] = {'n': int(len(x)), 'nonfinite_dropped': int(np.sum(~ok))}
    for a in REPORT_LEVELS:
      var, es = tail_risk.var_es(l20, a)
      out[f'var{a * 100:g}_20d'], out[f'es{a * 100:g}_20d'] = var, es
    out['var99_1d'] = tail_risk.var_es(l1, 0.99)[0]
    out['mean_window_vol'] = float(np.mean(mm.window_vol(x)))
    out['kurtosis_median'] = float(np.median(mm.excess_kurtosis(x)))
    out['mean_corr'] = mm.mean_pairwise_corr(x)
    out['crises'] = {c['name']: {'share_losing_at_least': float(np.mean(l20 >= c['loss_20d'])),
                                 'percentile': float(100 * np.mean(l20 < c['loss_20d']))}
                     for c in self.crises}
    return out


def crisis_windows(ds: market.MarketDataset, weights: np.ndarray) -> list[dict[str, Any]]:
  """The 20-day windows starting on the first trading day of October 2008 and March 2020
  (those in the data): dates, realised 20-day and worst 1-day portfolio loss, the
  trailing-volatility condition before them, its bin and whether it is beyond training."""
  r, dates = ds.returns.values, ds.returns.dates
  out = []
  for name, month in CRISES:
    first = np.datetime64(month + '-01', 'D')
    i = int(np.searchsorted(dates, first))
    if i >= len(dates) or str(dates[i])[:7] != month or i + ds.days > len(dates):
      continue
    lookback = int(ds.provenance['condition']['lookback'])
    if i < lookback:
      continue
    x = r[i:i + ds.days][None]
    level = float(market.trailing_log_vol(r, np.array([i]), lookback)[0])
    b, beyond = ds.vol_bins.bin_of_level(level)
    year = int(str(dates[i])[:4])
    out.append({'name': name, 'start': str(dates[i]), 'end': str(dates[i + ds.days - 1]),
                'loss_20d': float(mm.portfolio_losses(x, weights)[0]),
                'worst_1d_loss': float(np.max(mm.daily_portfolio_losses(x[0], weights))),
                'trailing_daily_vol': math.exp(level), 'bin': int(b), 'beyond_training': bool(beyond),
                'condition_percentile': float(ds.vol_bins.percentile_of_level(level)),
                'in_training_years': bool(year in ds.provenance['split']['train_years'])})
  return out


# ------------------------------------------------------------------------ the methods


def tail_noise(ctx: _Ctx, opts: dict[str, Any]) -> dict[str, Any]:
  """G from T * z at each temperature (T = 1 as reference), with the density cost."""
  mr, n = ctx.mr, int(ctx.st.num)
  labels = mr.marginal_labels(np.random.default_rng(ctx.seed), n)
  d = mr.dims
  rows = []
  for t in [1.0] + [t for t in opts['temperatures'] if t != 1.0]:
    z, x = ctx.draw(labels, ctx.seed, t)
    drop = np.asarray(base_density.log_density_drop(jnp.asarray(z), t, mr.samplers.flow.base,
                                                    mr.samplers.flow.nu))
    rows.append({'temperature': t, 'gaussian_cost_nats': market_stress.temperature_cost(t, d),
                 'measured_mean_log_density_drop_nats': float(np.mean(drop)),
                 **ctx.summary(x)})
  return {'d': d, 'labels': 'regimes drawn with training shares', 'rows': rows,
          'note': 'scaling z by T > 1 is a what-if: every row costs the stated base '
                  'log-density (nats) and carries no probability'}


def condition(ctx: _Ctx, opts: dict[str, Any]) -> dict[str, Any]:
  """G at the regimes of training percentiles and of the crises (beyond range flagged)."""
  mr, n = ctx.mr, int(ctx.st.num)
  bins = mr.dataset.vol_bins
  if not mr.num_classes:
    return {'skipped': 'an unconditional model (model.num_classes=0) has no regime to set'}
  targets = []
  for p in opts['percentiles']:
    level = float(bins.level_of_percentile(p))
    targets.append((f'training p{p:g}', level))
  for c in ctx.crises:
    targets.append((f'before {c["name"]} ({c["start"]})', math.log(c['trailing_daily_vol'])))
  rows = []
  for i, (name, level) in enumerate(targets):
    b, beyond = bins.bin_of_level(level)
    labels = np.full(n, int(b), np.int32)
    _, x = ctx.draw(labels, ctx.seed + 100 + i)
    rows.append({'condition': name, 'trailing_daily_vol': math.exp(level), 'bin': int(b),
                 'beyond_training_range': bool(beyond),
                 'training_percentile': float(bins.percentile_of_level(level)),
                 **ctx.summary(x)})
  lo, hi = bins.train_range
  return {'training_daily_vol_range': [math.exp(lo), math.exp(hi)], 'rows': rows}


def _is_interval(losses: np.ndarray, log_w: np.ndarray | None, level: float, n_boot: int,
                 seed: int) -> dict[str, Any]:
  """VaR/ES at `level` with a 90% iid-bootstrap interval over the draws."""
  # Plain weights w / n (the base density is normalised, so they are exact): unbiased tail
  # probabilities; self-normalising would let the few heavy weights on the safe side of a
  # shifted proposal swing the estimate.
  var, es = tail_risk.var_es(losses, level, log_w, self_normalised=False)
  rng = np.random.default_rng(seed)
  boot = []
  for _ in range(n_boot):
    i = rng.integers(0, len(losses), len(losses))
    boot.append(tail_risk.var_es(losses[i], level, None if log_w is None else log_w[i],
                                 self_normalised=False))
  lo, hi = np.quantile(np.array(boot), [0.05, 0.95], axis=0)
  return {'var': var, 'var_lo': float(lo[0]), 'var_hi': float(hi[0]),
          'es': es, 'es_lo': float(lo[1]), 'es_hi': float(hi[1])}


def importance(ctx: _Ctx, opts: dict[str, Any]) -> dict[str, Any]:
  """Mean-shift importance sampling in z against plain Monte Carlo."""
  mr, n, seed = ctx.mr, int(ctx.st.num), ctx.seed
  flow = mr.samplers.flow
  if ctx.decoder != 'reverse':
    return {'skipped': 'importance sampling differentiates G; this config has no G'}
  rng = np.random.default_rng(seed + 7)
  gen = ctx.generate_fn()
  loss_zy = lambda z, y: ctx.loss_u(gen(z, y))
  grad = jax.jit(jax.grad(lambda z, y: jnp.sum(loss_zy(z, y))))
  pilot = 1000
  z_pilot = mr.samplers.noise(jax.random.PRNGKey(seed + 11), pilot)
  y_pilot = jnp.asarray(mr.marginal_labels(rng, pilot))
  direction = market_stress.shift_direction(lambda z: grad(z, y_pilot), z_pilot)
  losses_of = jax.jit(loss_zy)

  def losses(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = [np.asarray(losses_of(jnp.asarray(z[s:s + 2000]), jnp.asarray(y[s:s + 2000])),
                      np.float64) for s in range(0, len(z), 2000)]
    return np.concatenate(out)

  started = time.perf_counter()
  m = int(ctx.st.mc_check)
  z_mc = np.asarray(mr.samplers.noise(jax.random.PRNGKey(seed + 13), m))
  l_mc = losses(z_mc, mr.marginal_labels(rng, m))
  mc_seconds = time.perf_counter() - started
  rows = []
  sizes = market_stress.shift_sizes(direction, opts['levels'], flow.base, flow.nu,
                                    jax.random.PRNGKey(seed + 17))
  for j, (level, size) in enumerate(zip(opts['levels'], sizes)):
    z, log_w = market_stress.mean_shift(jax.random.PRNGKey(seed + 19 + j), n, ctx.mr.samplers.shape,
                                        size * direction, flow.base, flow.nu)
    l_is = losses(np.asarray(z), mr.marginal_labels(rng, n))
    est = _is_interval(l_is, log_w, level, 200, seed)
    mc = _is_interval(l_mc, None, level, 200, seed)
    var = est['var']
    tail = l_is > var
    rows.append({'level': level, 'shift_norm': size, 'is': est, 'mc': mc,
                 'ess': tail_risk.effective_sample_size(log_w),
                 'tail_ess': (tail_risk.effective_sample_size(log_w[tail]) if tail.any() else 0.0),
                 'is_tail_draws': int(tail.sum()), 'mc_tail_draws': int(np.sum(l_mc > mc['var'])),
                 'intervals_overlap': bool(est['var_lo'] <= mc['var_hi'] and mc['var_lo'] <= est['var_hi'])})
  return {'n_is_per_level': n, 'n_mc': m, 'mc_seconds': mc_seconds, 'pilot': pilot,
          'proposal': 'z = mu + e, e ~ base; mu = s u, u = normalised mean loss gradient over '
                      'pilot draws, s = the level-quantile of u.z under the base',
          'rows': rows}


def _nearest_history(ds: market.MarketDataset, x: np.ndarray, weights: np.ndarray
                     ) -> dict[str, Any]:
  """The historical window (any start from the cleaning start on) nearest to x (days, A)."""
  r, dates = ds.returns.values, ds.returns.dates
  starts = np.arange(ds.returns.first_used, len(r) - ds.days + 1)
  windows = r[starts[:, None] + np.arange(ds.days)]
  dist, idx, _ = mm.nearest_train_distance(x[None], windows, None)
  i = int(starts[idx[0]])
  year = int(str(dates[i])[:4])
  return {'start': str(dates[i]), 'end': str(dates[i + ds.days - 1]), 'distance': float(dist[0]),
          'loss_20d': float(mm.portfolio_losses(windows[idx[0]][None], weights)[0]),
          'split': 'train' if year in ds.provenance['split']['train_years'] else 'held-out'}


def reverse(ctx: _Ctx, opts: dict[str, Any]) -> dict[str, Any]:
  """Worst plausible scenario per regime, scored by F and placed in history."""
  mr, st = ctx.mr, ctx.st
  if ctx.decoder != 'reverse':
    return {'skipped': 'the reverse stress test differentiates G; this config has no G'}
  flow = mr.samplers.flow
  region = market_stress.plausible_region(float(st.reverse_quantile), mr.dims, flow.base, flow.nu,
                                          jax.random.PRNGKey(ctx.seed + 23))
  labels = list(range(mr.num_classes)) if mr.num_classes else [-1]
  held = mr.dataset.heldout_stride1
  held_nll = mr.nll(held.x, mr.dataset.class_labels(held).astype(np.int32))['conditional']
  rows = []
  for label in labels:
    loss_fn = lambda z, label=label: ctx.loss_u(ctx.generate_fn(label)(z))
    z_try = mr.samplers.noise(jax.random.PRNGKey(ctx.seed + 29 + label), 256)
    starts = np.asarray(z_try)[np.argsort(-np.asarray(jax.jit(loss_fn)(z_try)))[:8]]
    z_best, values = market_stress.worst_scenario(loss_fn, starts, region, int(st.reverse_steps),
                                                  float(st.reverse_lr))
    k = int(np.argmax(values))
    z_star = z_best[k:k + 1].astype(np.float32)
    y = np.full(1, label, np.int32)
    u = mr.decode('reverse', z_star, y)
    x = mr.data.from_model(u)[0]
    nll = -mr.log_prob(u, y)
    z_f = np.asarray(mr.samplers.encode(mr.params['forward'], jnp.asarray(u, jnp.float32),
                                        jnp.asarray(y)))
    rows.append({
        'label': label, 'loss_20d': float(values[k]),
        'loss_check': float(mm.portfolio_losses(x[None], ctx.w)[0]),
        'z_radius': float(np.linalg.norm(z_star)), 'inside_region': bool(region.contains(z_star)[0]),
        'f_latent_radius': float(np.linalg.norm(z_f)),
        'f_latent_inside_region': bool(region.contains(z_f)[0]),
        'log_likelihood_raw_per_dim': float(-mr.nll_units(nll)['raw_per_dim'][0]),
        'nll_percentile_among_heldout': float(100 * np.mean(held_nll < nll[0])),
        'asset_20d_log_returns': dict(zip(mr.data.assets, x.sum(axis=0).tolist())),
        'ew_daily_path': mm.daily_portfolio_losses(x, ctx.w).tolist(),
        'nearest_history': _nearest_history(mr.dataset, x, ctx.w)})
  worst = max(rows, key=lambda r: r['loss_20d'])
  return {'region': region.to_dict(), 'rows': rows, 'worst': worst,
          'heldout_windows_scored': int(len(held_nll))}


def conditional_backtest(ctx: _Ctx, opts: dict[str, Any]) -> dict[str, Any]:
  """Held-out days' 1-day VaR99 from the bin of their trailing volatility."""
  mr, ds = ctx.mr, ctx.mr.dataset
  n = int(ctx.st.num)
  k = max(mr.num_classes, 1)
  var_bin = np.zeros(k)
  for b in range(k):
    labels = np.full(n, b if mr.num_classes else -1, np.int32)
    _, x = ctx.draw(labels, ctx.seed + 300 + b)
    var_bin[b] = tail_risk.var_es(mm.daily_portfolio_losses(x[:, 0], ctx.w), 0.99)[0]
  _, x_all = ctx.draw(mr.marginal_labels(np.random.default_rng(ctx.seed), n), ctx.seed + 399)
  var_uncond = tail_risk.var_es(mm.daily_portfolio_losses(x_all[:, 0], ctx.w), 0.99)[0]
  idx = np.flatnonzero(ds.test_days)
  lookback = int(ds.provenance['condition']['lookback'])
  idx = idx[idx >= lookback]
  level = market.trailing_log_vol(ds.returns.values, idx, lookback)
  bins, beyond = ds.vol_bins.bin_of_level(level)
  if not mr.num_classes:
    bins = np.zeros_like(bins)
  realised = mm.daily_portfolio_losses(ds.returns.values[idx], ctx.w)
  forecast = var_bin[bins]
  conditional = backtest.backtest(realised, forecast, 0.99)
  unconditional = backtest.backtest(realised, var_uncond, 0.99)
  hits = backtest.exceedances(realised, forecast)
  years = ds.returns.years[idx]
  return {
      'days': int(len(idx)), 'first_day': str(ds.returns.dates[idx[0]]),
      'last_day': str(ds.returns.dates[idx[-1]]), 'samples_per_bin': n,
      'var99_1d_per_bin': var_bin.tolist(), 'var99_1d_unconditional': var_uncond,
      'conditional': conditional, 'unconditional': unconditional,
      'exceptions_per_year': {int(y): int(hits[years == y].sum()) for y in np.unique(years)},
      'days_beyond_training_range': int(beyond.sum()),
      'exceptions_on_days_beyond_range': int(hits[beyond].sum())}


FUNCTIONS = {'tail_noise': tail_noise, 'condition': condition, 'importance': importance,
             'reverse': reverse, 'backtest': conditional_backtest}


def run(config, workdir: str | os.PathLike) -> Path:
  """Runs config.stress.methods; writes DIR/stress/stress_report.{json,md}; returns the .md."""
  opts = parse(config)
  data = market_source.load(config)
  weights, weights_text = market_run.portfolio_weights(config.stress.weights, data)
  mr = market_run.restore(config, workdir)
  ctx = _Ctx(mr, weights, config)
  report: dict[str, Any] = {'title': 'Market stress report', **mr.header(),
                            'portfolio': weights_text, 'portfolio_weights': weights.tolist(),
                            'decoder': ctx.decoder, 'crises': ctx.crises,
                            'load_before': market_run.load_average(), 'seconds': {}}
  for method in opts['methods']:
    started = time.perf_counter()
    report[method] = FUNCTIONS[method](ctx, opts)
    report['seconds'][method] = round(time.perf_counter() - started, 1)
  report['load_after'] = market_run.load_average()
  out = Path(workdir) / 'stress'
  market_run.write_json(out / 'stress_report.json', report)
  files.write_text_atomic(out / 'stress_report.md', render_markdown(report))
  return out / 'stress_report.md'


# ------------------------------------------------------------------------ Markdown


def _f(v: Any, digits: int = 3) -> str:
  if isinstance(v, bool):
    return 'yes' if v else 'no'
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    return f'{v:.{digits}f}' if math.isfinite(v) else f'non-finite ({v})'
  return str(v)


def _crisis_cells(row: dict[str, Any]) -> list[str]:
  return [f'{_f(c["share_losing_at_least"], 4)}' for c in row['crises'].values()]


def render_markdown(rep: dict[str, Any]) -> str:
  """The stress report as Markdown tables (losses as fractions of portfolio value)."""
  d = rep['data']
  lines = [f'# {rep["title"]}', '',
           f'Data: {d["name"]} ({d["version"]}), sha256 `{d["sha256"]}`; split '
           f'`{rep["split"]["name"]}` ({rep["split"]["rule"]}), held-out years '
           f'{rep["split"]["heldout_years"]}. Checkpoint step {rep["checkpoint"]["step"]} '
           f'(EMA), base {rep["model"]["base"]}. Portfolio: {rep["portfolio"]}. Scenarios by '
           f'{"G (1 NFE)" if rep["decoder"] == "reverse" else "F exact inverse"}.', '',
           f'**{rep["not_modelled"]}** **{rep["disclaimer"]}**', '']
  names = [c['name'] for c in rep['crises']]
  if rep['crises']:
    lines += ['## Crisis windows (realised)', '',
              '| window | dates | 20-day loss | worst 1-day loss | trailing daily vol | bin | '
              'beyond training | in training years |', '|---|---|---|---|---|---|---|---|']
    for c in rep['crises']:
      lines.append(f'| {c["name"]} | {c["start"]} to {c["end"]} | {_f(c["loss_20d"])} | '
                   f'{_f(c["worst_1d_loss"])} | {_f(c["trailing_daily_vol"], 4)} | {c["bin"]} | '
                   f'{_f(c["beyond_training"])} | {_f(c["in_training_years"])} |')
    lines.append('')
  crisis_head = ''.join(f' P(L >= {n}) |' for n in names)
  crisis_rule = '---|' * len(names)
  if 'tail_noise' in rep:
    t = rep['tail_noise']
    lines += ['## tail_noise (what-if: z scaled by T; no probability attached)', '',
              f'd = {t["d"]}. Cost = the base log-density given up (nats per scenario).', '',
              '| T | Gaussian cost (T^2-1)d/2 | measured drop | VaR99 20d | ES97.5 20d | ES99 20d | '
              'VaR99 1d | mean window vol |' + crisis_head,
              '|---|---|---|---|---|---|---|---|' + crisis_rule]
    for r in t['rows']:
      lines.append(f'| {r["temperature"]:g} | {_f(r["gaussian_cost_nats"], 1)} | '
                   f'{_f(r["measured_mean_log_density_drop_nats"], 1)} | {_f(r["var99_20d"])} | '
                   f'{_f(r["es97.5_20d"])} | {_f(r["es99_20d"])} | {_f(r["var99_1d"], 4)} | '
                   f'{_f(r["mean_window_vol"], 4)} |' + ''.join(f' {c} |' for c in _crisis_cells(r)))
    lines.append('')
  if 'condition' in rep:
    c = rep['condition']
    lines += ['## condition (G at a volatility regime)', '']
    if 'skipped' in c:
      lines += [c['skipped'], '']
    else:
      lo, hi = c['training_daily_vol_range']
      lines += [f'Training range of trailing daily vol: {lo:.4f} to {hi:.4f}.', '',
                '| condition | trailing daily vol | training pct | bin | beyond range | VaR99 20d | '
                'ES97.5 20d | VaR99 1d | kurtosis | mean corr |' + crisis_head,
                '|---|---|---|---|---|---|---|---|---|---|' + crisis_rule]
      for r in c['rows']:
        lines.append(f'| {r["condition"]} | {_f(r["trailing_daily_vol"], 4)} | '
                     f'{_f(r["training_percentile"], 1)} | {r["bin"]} | '
                     f'{"**yes**" if r["beyond_training_range"] else "no"} | {_f(r["var99_20d"])} | '
                     f'{_f(r["es97.5_20d"])} | {_f(r["var99_1d"], 4)} | {_f(r["kurtosis_median"], 2)} | '
                     f'{_f(r["mean_corr"])} |' + ''.join(f' {x} |' for x in _crisis_cells(r)))
      lines.append('')
  if 'importance' in rep:
    im = rep['importance']
    lines += ['## importance (20-day loss VaR/ES by importance sampling in z)', '']
    if 'skipped' in im:
      lines += [im['skipped'], '']
    else:
      lines += [f'{im["n_is_per_level"]} draws per level; plain Monte Carlo check with '
                f'{im["n_mc"]} draws ({_f(im["mc_seconds"], 1)} s). 90% bootstrap intervals. '
                f'Proposal: {im["proposal"]}.', '',
                '| level | IS VaR | MC VaR | IS ES | MC ES | ESS | tail ESS | MC tail draws | '
                'intervals overlap |', '|---|---|---|---|---|---|---|---|---|']
      for r in im['rows']:
        a, b = r['is'], r['mc']
        lines.append(f'| {r["level"]:g} | {_f(a["var"])} [{_f(a["var_lo"])}, {_f(a["var_hi"])}] | '
                     f'{_f(b["var"])} [{_f(b["var_lo"])}, {_f(b["var_hi"])}] | '
                     f'{_f(a["es"])} [{_f(a["es_lo"])}, {_f(a["es_hi"])}] | '
                     f'{_f(b["es"])} [{_f(b["es_lo"])}, {_f(b["es_hi"])}] | {_f(r["ess"], 0)} | '
                     f'{_f(r["tail_ess"], 0)} | {r["mc_tail_draws"]} | {_f(r["intervals_overlap"])} |')
      lines.append('')
  if 'reverse' in rep:
    rv = rep['reverse']
    lines += ['## reverse (worst plausible scenario per regime)', '']
    if 'skipped' in rv:
      lines += [rv['skipped'], '']
    else:
      reg = rv['region']
      bound = (f'|z|^2 <= chi2_d({reg["q"]}) = {reg["radius2"]:.1f} (radius {reg["radius"]:.2f}, '
               f'typical {reg["typical_radius"]:.2f})' if reg['kind'] == 'ball' else
               f'log p(z) >= {reg["log_p_min"]:.1f} (the base\'s {reg["q"]} HDR)')
      lines += [f'Constraint: {bound}. NLL percentile: share of the {rv["heldout_windows_scored"]} '
                'held-out windows (stride 1) that F finds more likely.', '',
                '| bin | 20-day loss | z radius | F latent radius | F latent in region | '
                'log-lik raw nats/dim | NLL pct vs held-out | nearest history (loss, distance) |',
                '|---|---|---|---|---|---|---|---|']
      for r in rv['rows']:
        h = r['nearest_history']
        lines.append(f'| {r["label"]} | {_f(r["loss_20d"])} | {_f(r["z_radius"], 2)} | '
                     f'{_f(r["f_latent_radius"], 2)} | {_f(r["f_latent_inside_region"])} | '
                     f'{_f(r["log_likelihood_raw_per_dim"])} | {_f(r["nll_percentile_among_heldout"], 1)} | '
                     f'{h["start"]} ({h["split"]}; {_f(h["loss_20d"])}, {_f(h["distance"])}) |')
      w = rv['worst']
      worst_assets = sorted(w['asset_20d_log_returns'].items(), key=lambda kv: kv[1])[:5]
      lines += ['', f'Worst: bin {w["label"]}, 20-day loss {_f(w["loss_20d"])}; its five worst '
                'assets (20-day log return): ' + ', '.join(f'{a} {v:.3f}' for a, v in worst_assets)
                + '.', '']
  if 'backtest' in rep:
    bt = rep['backtest']
    lines += ['## backtest (1-day VaR99 on held-out days)', '',
              f'{bt["days"]} held-out days ({bt["first_day"]} to {bt["last_day"]}); '
              f'{bt["days_beyond_training_range"]} have a trailing volatility beyond the training '
              f'range ({bt["exceptions_on_days_beyond_range"]} exceptions on them).', '',
              '| forecast | exceptions (rate) | Kupiec p | Christoffersen ind. p | cond. coverage p | '
              'traffic light g/y/r |', '|---|---|---|---|---|---|']
    for name in ('conditional', 'unconditional'):
      b = bt[name]
      tl = b['traffic_light']['counts']
      lines.append(f'| {name} | {b["kupiec"]["exceptions"]} '
                   f'({_f(b["kupiec"]["rate"], 4)}) | {_f(b["kupiec"]["p_value"], 4)} | '
                   f'{_f(b["independence"]["p_value"], 4)} | '
                   f'{_f(b["conditional_coverage"]["p_value"], 4)} | '
                   f'{tl["green"]}/{tl["yellow"]}/{tl["red"]} |')
    lines += ['', 'Exceptions per year (conditional): ' + ', '.join(
        f'{y}: {n}' for y, n in bt['exceptions_per_year'].items()), '']
  lines += ['Seconds per method: ' + ', '.join(f'{k} {v}' for k, v in rep['seconds'].items())
            + f'; load average before {rep["load_before"]["load_1m"]:.1f}, after '
            f'{rep["load_after"]["load_1m"]:.1f} on {rep["load_after"]["cpus"]} CPUs.', '']
  return '\n'.join(lines)
