"""The market scenario report: metrics of scenario sets against real held-out windows,
compared to fixed bars (PASS/FAIL), written as JSON, Markdown and PNG plots.

`build_report(scenarios, dataset)` takes name -> scenarios (n, days, A) of daily log
returns (baselines now, a model's samples later) and always adds the two real sets:
`real_heldout` (the non-overlapping held-out windows, the reference) and `real_train`
(all training windows at stride 1). For every set it reports the stylized facts with
90% bootstrap intervals (over years for the real sets, over windows for generated
ones), the discriminative score against real_heldout, the distance to the nearest
training window, the 20-day VaR99 exceedance rate of the held-out windows, and a 1-day
VaR99 backtest over the held-out days (Kupiec, Christoffersen, Basel traffic light). It
adds the likelihood baselines (and any per-window held-out NLLs passed in `nll`).
`write_report` writes market_report.json (`runtime.files.json_text`: a non-finite number
becomes the string 'non-finite (nan)', its path logged), market_report.md and
acf_abs.png, qq.png, corr_diff.png, loss_hist.png.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biflow_jax.data import market
from biflow_jax.runtime import files
from biflow_jax.evaluation import backtest, block_bootstrap, market_metrics as mm, tail_risk

REAL_HELDOUT, REAL_TRAIN = 'real_heldout', 'real_train'
QQ_PROBS = np.r_[0.0005, 0.001, 0.0025, 0.005, np.arange(0.01, 1.0, 0.01), 0.995, 0.9975,
                 0.999, 0.9995]
PLOTS = ('acf_abs.png', 'qq.png', 'corr_diff.png', 'loss_hist.png')


@dataclasses.dataclass(frozen=True)
class Bar:
  """A pass bar for one metric. rule: 'abs_le', 'ge', 'le', 'lt', 'between' (value is
  (lo, hi), inclusive) or 'rel_train' (|v - train| <= value * train, train being the
  real_train set's value of the same metric)."""
  metric: str
  rule: str
  value: float | tuple[float, float]
  text: str

  def check(self, v: float, train: float | None = None) -> str:
    if v is None or not math.isfinite(v):
      return 'FAIL (non-finite)'
    if self.rule == 'abs_le':
      ok = abs(v) <= self.value
    elif self.rule == 'ge':
      ok = v >= self.value
    elif self.rule == 'le':
      ok = v <= self.value
    elif self.rule == 'lt':
      ok = v < self.value
    elif self.rule == 'between':
      ok = self.value[0] <= v <= self.value[1]
    elif self.rule == 'rel_train':
      ok = train is not None and abs(v - train) <= self.value * abs(train)
    else:
      raise ValueError(f'unknown rule {self.rule!r}')
    return 'PASS' if ok else 'FAIL'


# The bars of the market-scenarios issue, fixed before any model was measured.
BARS = (
    Bar('acf_r_lag1', 'abs_le', 0.05, '|ACF(r), lag 1| <= 0.05'),
    Bar('acf_abs_lag1', 'ge', 0.12, 'ACF(|r|), lag 1 >= 0.12'),
    Bar('acf_abs_lag5', 'ge', 0.08, 'ACF(|r|), lag 5 >= 0.08'),
    Bar('kurtosis_median', 'between', (3.0, 12.0), 'median excess kurtosis in [3, 12]'),
    Bar('leverage_lag1', 'lt', 0.0, 'leverage corr(r_t, r_{t+1}^2) < 0'),
    Bar('mean_corr', 'between', (0.26, 0.32), 'mean pairwise correlation in [0.26, 0.32]'),
    Bar('cv_window_vol', 'ge', 0.20, 'CV of window realised vol >= 0.20'),
    Bar('es975', 'rel_train', 0.20, "20-day ES97.5 within 20% of real_train's"),
    Bar('discriminative', 'le', 0.15, 'discriminative score <= 0.15'),
    Bar('nn_distance', 'ge', 0.30, 'median distance to nearest training window >= 0.30'),
)
NLL_BAR_MODEL = 'student_t_nu5'
LABELS = {
    'acf_r_lag1': 'ACF(r), lag 1', 'acf_abs_lag1': 'ACF(|r|), lag 1',
    'acf_abs_lag5': 'ACF(|r|), lag 5', 'kurtosis_median': 'median excess kurtosis',
    'leverage_lag1': 'leverage corr(r_t, r_{t+1}^2)', 'mean_corr': 'mean pairwise corr',
    'cv_window_vol': 'CV of window realised vol', 'var95': '20-day EW VaR95',
    'es975': '20-day EW ES97.5', 'var99': '20-day EW VaR99',
    'discriminative': 'discriminative score', 'nn_distance': 'NN distance to train',
}


def _finite_windows(name: str, x: np.ndarray, days: int, assets: int) -> tuple[np.ndarray, int]:
  x = mm.check_scenarios(x, days, assets)
  ok = np.all(np.isfinite(x), axis=(1, 2))
  return x[ok], int(np.sum(~ok))


def _median_interval(d: np.ndarray, n_boot: int, level: float, seed: int) -> dict[str, Any]:
  return block_bootstrap.interval(lambda i: float(np.median(d[i])), np.arange(len(d)),
                                  n_boot, level, seed)


def _set_report(name: str, x: np.ndarray, groups: np.ndarray, kind: str,
                dataset: market.MarketDataset, weights: np.ndarray, n_boot: int,
                level: float, seed: int, max_nn: int) -> dict[str, Any]:
  rep: dict[str, Any] = {'kind': kind, 'n_windows': int(len(x)),
                         'intervals_over': 'years' if kind == 'real' else 'windows'}
  rep['facts'] = mm.facts_with_intervals(x, groups, n_boot, level, seed, weights)
  if name != REAL_HELDOUT:
    d = mm.discriminative_score(dataset.heldout.x, x, seed=seed)
    rep['discriminative'] = {'value': d['score'], 'per_split': d['scores'], 'm': d['m']}
  if name != REAL_TRAIN:
    dist, _, _ = mm.nearest_train_distance(x, dataset.train.x, max_nn, seed)
    rep['nn_distance'] = _median_interval(dist, n_boot, level, seed)
    rep['nn_distance']['n_used'] = int(len(dist))
  daily = mm.daily_portfolio_losses(x.reshape(-1, x.shape[2]), weights)
  var20 = rep['facts']['var99']['value']
  # Against its own VaR the held-out set would be scored in-sample, so it is skipped;
  # so is a set whose losses overflow (no VaR to test).
  if name != REAL_HELDOUT and math.isfinite(var20) and np.all(np.isfinite(daily)):
    real_losses = mm.portfolio_losses(dataset.heldout.x, weights)
    hits = backtest.exceedances(real_losses, var20)
    rep['heldout_exceed_var99_20d'] = {
        'rate': float(hits.mean()), 'count': int(hits.sum()), 'windows': int(len(hits)),
        'kupiec': backtest.kupiec_pof(hits, 0.01)}
    var1 = tail_risk.var_es(daily, 0.99)[0]
    realised = mm.daily_portfolio_losses(dataset.returns.values[dataset.test_days], weights)
    rep['backtest_1d_var99'] = {'var99_1d': var1, **backtest.backtest(realised, var1, 0.99)}
  return rep


def _plot_data(sets: Mapping[str, np.ndarray], weights: np.ndarray,
               facts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  held = sets[REAL_HELDOUT]
  c_held = mm.corr_matrix(held)
  losses = {k: mm.portfolio_losses(x, weights) for k, x in sets.items()}
  losses = {k: v[np.isfinite(v)] for k, v in losses.items()}
  lo = min(float(np.quantile(v, 0.001)) for v in losses.values())
  hi = max(float(v.max()) for v in losses.values())
  edges = np.linspace(lo, hi, 61)
  return {
      'acf_abs': {k: mm.acf_curve(x, True).tolist() for k, x in sets.items()},
      'qq': {'probs': QQ_PROBS.tolist(),
             'quantiles': {k: np.quantile(x.ravel(), QQ_PROBS).tolist()
                           for k, x in sets.items()}},
      'corr_diff': {k: (mm.corr_matrix(x) - c_held).tolist()
                    for k, x in sets.items() if k != REAL_HELDOUT},
      'loss_hist': {'edges': edges.tolist(),
                    'density': {k: np.histogram(v, edges, density=True)[0].tolist()
                                for k, v in losses.items()},
                    'lines': {k: {'var99': facts[k]['var99']['value'],
                                  'es975': facts[k]['es975']['value']} for k in sets}},
  }


def _nll_section(dataset: market.MarketDataset, nll: Mapping[str, np.ndarray] | None,
                 n_boot: int, level: float, seed: int) -> dict[str, Any]:
  out = mm.nll_baselines(dataset, (5.0,), n_boot, level, seed)
  for m in out['models'].values():
    m['kind'] = 'baseline'
  jac = out['jacobian_per_dim']
  for name, v in (nll or {}).items():
    v = np.asarray(v, np.float64)
    s = block_bootstrap.interval(lambda i, v=v: float(np.mean(v[i])), dataset.heldout.year,
                                 n_boot, level, seed)
    raw = {k: (x + jac if k in ('value', 'lo', 'hi') else x) for k, x in s.items()}
    out['models'][name] = {'kind': 'model', 'standardised': s, 'raw': raw,
                           'per_window_standardised': v.tolist()}
  bar = out['models'][NLL_BAR_MODEL]['standardised']['value']
  out['bar'] = {'text': f'held-out NLL (standardised, nats/dim) < {NLL_BAR_MODEL} '
                        f'({bar:.4f})', 'value': bar}
  for name, m in out['models'].items():
    v = m['standardised']['value']
    m['status'] = ('n/a' if name == NLL_BAR_MODEL else
                   'FAIL (non-finite)' if not math.isfinite(v) else
                   'PASS' if v < bar else 'FAIL')
  return out


def build_report(scenarios: Mapping[str, np.ndarray], dataset: market.MarketDataset,
                 nll: Mapping[str, np.ndarray] | None = None,
                 weights: np.ndarray | None = None, n_boot: int = 500,
                 level: float = 0.9, seed: int = 0, max_nn: int = 2000,
                 meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The report dict for scenario sets name -> (n, days, A) daily log returns.

  nll: optional name -> (n_heldout,) per-window NLL in nats/dim of the standardised
    non-overlapping held-out windows (dataset.heldout), e.g. a model's; the raw-return
    NLL is derived with the standardisation's Jacobian.
  weights: (A,) portfolio weights for the loss metrics (equal weights if None).
  Windows containing a non-finite value are dropped and counted ('n_nonfinite_dropped').
  Raises ValueError for a wrong shape, a reserved name (real_heldout, real_train) or a
  set with fewer than 2 finite windows.
  """
  a = len(dataset.assets)
  w = mm.equal_weights(a) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (a,):
    raise ValueError(f'weights must have shape ({a},), got {w.shape}')
  for name, v in (nll or {}).items():
    if np.shape(v) != (len(dataset.heldout),):
      raise ValueError(f'nll[{name!r}] must be the per-window NLL (nats/dim, standardised) '
                       f'of the {len(dataset.heldout)} held-out windows, got shape '
                       f'{np.shape(v)}')
  sets: dict[str, np.ndarray] = {REAL_HELDOUT: dataset.heldout.x, REAL_TRAIN: dataset.train.x}
  groups = {REAL_HELDOUT: dataset.heldout.year, REAL_TRAIN: dataset.train.year}
  dropped = {}
  for name, x in scenarios.items():
    if name in sets:
      raise ValueError(f'scenario set name {name!r} is reserved for the real data')
    x, bad = _finite_windows(name, x, dataset.days, a)
    if len(x) < 2:
      raise ValueError(f'scenario set {name!r} has {len(x)} finite windows (need >= 2)')
    sets[name], groups[name], dropped[name] = x, np.arange(len(x)), bad
  report: dict[str, Any] = {
      'title': 'Market scenario report',
      'provenance': dataset.provenance,
      'not_modelled': market.NOT_MODELLED,
      'disclaimer': market.NOT_ADVICE,
      'portfolio_weights': w.tolist(),
      'bootstrap': {'level': level, 'n_boot': n_boot, 'seed': seed},
      'bars': [dataclasses.asdict(b) for b in BARS],
      'meta': dict(meta or {}),
      'sets': {},
  }
  for name, x in sets.items():
    kind = 'real' if name in (REAL_HELDOUT, REAL_TRAIN) else 'generated'
    rep = _set_report(name, x, groups[name], kind, dataset, w, n_boot, level, seed, max_nn)
    rep['n_nonfinite_dropped'] = dropped.get(name, 0)
    report['sets'][name] = rep
  train_facts = report['sets'][REAL_TRAIN]['facts']
  for name, rep in report['sets'].items():
    status = {}
    for bar in BARS:
      if bar.metric in rep['facts']:
        v = rep['facts'][bar.metric]['value']
      elif bar.metric in rep:
        v = rep[bar.metric]['value']
      else:
        status[bar.metric] = 'n/a'
        continue
      train = train_facts.get(bar.metric, {}).get('value')
      status[bar.metric] = ('n/a' if bar.rule == 'rel_train' and name == REAL_TRAIN
                            else bar.check(v, train))
    rep['bars'] = status
  report['nll'] = _nll_section(dataset, nll, n_boot, level, seed)
  report['plot_data'] = _plot_data(sets, w, {k: r['facts'] for k, r in report['sets'].items()})
  return report


def _fmt(v: Any, digits: int = 3) -> str:
  if isinstance(v, str):
    return v
  if v is None or not math.isfinite(v):
    return f'non-finite ({v})'
  return f'{v:.{digits}f}'


def _cell(d: Mapping[str, Any]) -> str:
  s = _fmt(d['value'])
  if 'lo' in d:
    s += f' [{_fmt(d["lo"])}, {_fmt(d["hi"])}]'
  return s


def _row(cells: list[str]) -> str:
  # A '|' inside a cell (as in |r|) would end the cell in a Markdown table.
  return '| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |'


def render_markdown(report: Mapping[str, Any]) -> str:
  """The report as Markdown: provenance, disclaimers, metric table with PASS/FAIL,
  likelihood table, backtests and the plots."""
  p = report['provenance']
  sp = p['split']
  names = list(report['sets'])
  lines = [f'# {report["title"]}', '']
  data = p['data']
  lines += [f'Data: {data.get("name")} ({data.get("version", "user file")}), sha256 '
            f'`{data.get("sha256")}`; assets: {", ".join(p["assets"])}.',
            f'Cleaning: {p["cleaning"]["choice"]} (start {p["cleaning"]["start"]}, returns '
            f'{p["cleaning"]["first_return"]} to {p["cleaning"]["last_return"]}).',
            f'Split `{sp["name"]}` ({sp["rule"]}): held-out years {sp["heldout_years"]}; '
            f'{sp["train_windows_stride1"]} training windows (stride 1), '
            f'{sp["heldout_windows_nonoverlapping"]} non-overlapping held-out windows of '
            f'{sp["days_per_window"]} days.', '']
  if data.get('usage_note'):
    lines += [f'Data note: {data["usage_note"]}', '']
  if data.get('survivorship_bias'):
    lines += [f'Survivorship bias: {data["survivorship_bias"]}', '']
  lines += [f'**{report["not_modelled"]}** **{report["disclaimer"]}**', '']
  b = report['bootstrap']
  lines += [f'Values with {int(b["level"] * 100)}% percentile bootstrap intervals '
            f'({b["n_boot"]} resamples; over years for real sets, over windows for '
            'generated ones). PASS/FAIL compares the point value with the bar.', '']
  lines += ['| metric | ' + ' | '.join(names) + ' | bar |',
            '|---|' + '---|' * (len(names) + 1)]
  bars = {bar['metric']: bar['text'] for bar in report['bars']}
  metrics = list(mm.FACT_NAMES) + ['discriminative', 'nn_distance']
  for m in metrics:
    row = [LABELS.get(m, m)]
    for n in names:
      rep = report['sets'][n]
      d = rep['facts'].get(m) or rep.get(m)
      if d is None:
        row.append('-')
        continue
      cell = _cell(d)
      st = rep['bars'].get(m, 'n/a')
      if st != 'n/a':
        cell += f' **{st}**' if st != 'PASS' else ' PASS'
      row.append(cell)
    row.append(bars.get(m, 'report only'))
    lines.append(_row(row))
  lines += ['', 'Windows: ' + ', '.join(f'{n} {report["sets"][n]["n_windows"]}' +
                                        (f' ({report["sets"][n]["n_nonfinite_dropped"]} '
                                         'non-finite dropped)'
                                         if report['sets'][n].get('n_nonfinite_dropped') else '')
                                        for n in names), '']
  nll = report['nll']
  lines += ['## Held-out likelihood', '',
            f'Per dimension over {nll["evaluated_on"]}; raw = standardised + '
            f'{_fmt(nll["jacobian_per_dim"], 4)} (the standardisation\'s Jacobian). '
            f'Bar: {nll["bar"]["text"]}.', '',
            '| model | NLL standardised, nats/dim | NLL raw log returns, nats/dim | bar |',
            '|---|---|---|---|']
  for name, m in nll['models'].items():
    lines.append(_row([name, _cell(m['standardised']), _cell(m['raw']), m['status']]))
  lines += ['', '## VaR backtests on held-out data', '',
            '20-day: share of non-overlapping held-out windows whose equal-weight loss '
            "exceeds the set's 20-day VaR99 (1% expected). 1-day: the set's pooled 1-day "
            'VaR99 against each held-out day (unconditional, so clustering of '
            'exceptions is expected to fail Christoffersen).', '',
            '| set | 20-day exceed. (count/windows) | 1-day VaR99 | 1-day exceed. rate | '
            'Kupiec p | Christoffersen ind. p | cond. coverage p | traffic light g/y/r |',
            '|---|---|---|---|---|---|---|---|']
  for n in names:
    rep = report['sets'][n]
    bt = rep.get('backtest_1d_var99')
    if bt is None:
      row = [n] + ['-'] * 7
    else:
      e = rep['heldout_exceed_var99_20d']
      tl = bt['traffic_light']['counts']
      row = [n, f'{_fmt(e["rate"])} ({e["count"]}/{e["windows"]})',
             _fmt(bt['var99_1d'], 4), _fmt(bt['kupiec']['rate'], 4),
             _fmt(bt['kupiec']['p_value'], 4), _fmt(bt['independence']['p_value'], 4),
             _fmt(bt['conditional_coverage']['p_value'], 4),
             f'{tl["green"]}/{tl["yellow"]}/{tl["red"]}']
    lines.append(_row(row))
  lines += ['', '## Plots', '']
  lines += [f'![{f}]({f})' for f in PLOTS]
  if report.get('meta'):
    lines += ['', '## Run', '', '```', files.json_text(report['meta'], 'the run', indent=1), '```']
  return '\n'.join(lines) + '\n'


def write_plots(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
  """Writes the four PNGs from report['plot_data'] into out_dir; returns their paths."""
  # matplotlib is imported here (it is slow to import and only the PNGs need it), and
  # through Figure rather than pyplot so no global backend or GUI is involved (Agg).
  from matplotlib.figure import Figure
  out = Path(out_dir)
  pd = report['plot_data']
  names = list(pd['acf_abs'])
  paths = []

  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.subplots()
  for n in names:
    curve = pd['acf_abs'][n]
    ax.plot(range(1, len(curve) + 1), curve, marker='o', ms=3,
            lw=2.5 if n == REAL_HELDOUT else 1.2, label=n)
  ax.axhline(0, color='k', lw=0.5)
  ax.set(xlabel='lag (days)', ylabel='pooled ACF of |r|',
         title='Volatility clustering: ACF of |r| within windows')
  ax.legend(fontsize=8)
  paths.append(out / 'acf_abs.png')
  fig.savefig(paths[-1], dpi=110)

  fig = Figure(figsize=(6, 6), layout='constrained')
  ax = fig.subplots()
  q = pd['qq']['quantiles']
  ref = np.array(q[REAL_HELDOUT])
  for n in names:
    if n != REAL_HELDOUT:
      ax.plot(ref, q[n], marker='.', lw=0.8, label=n)
  lim = [ref.min(), ref.max()]
  ax.plot(lim, lim, 'k--', lw=0.8, label='y = x')
  ax.set(xlabel='held-out quantile (daily log return)', ylabel='set quantile',
         title='QQ of pooled daily log returns vs real held-out')
  ax.legend(fontsize=8)
  paths.append(out / 'qq.png')
  fig.savefig(paths[-1], dpi=110)

  diffs = pd['corr_diff']
  cols = min(3, len(diffs))
  rows = math.ceil(len(diffs) / cols)
  fig = Figure(figsize=(4.2 * cols, 3.8 * rows), layout='constrained')
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  assets = report['provenance']['assets']
  im = None
  for ax, (n, d) in zip(axes, diffs.items()):
    im = ax.imshow(np.array(d), cmap='RdBu_r', vmin=-0.3, vmax=0.3)
    ax.set_title(f'{n} - real_heldout', fontsize=9)
    ax.set_xticks(range(len(assets)), assets, rotation=90, fontsize=5)
    ax.set_yticks(range(len(assets)), assets, fontsize=5)
  for ax in axes[len(diffs):]:
    ax.axis('off')
  if im is not None:
    fig.colorbar(im, ax=list(axes), shrink=0.6, label='correlation difference')
  paths.append(out / 'corr_diff.png')
  fig.savefig(paths[-1], dpi=110)

  lh = pd['loss_hist']
  edges = np.array(lh['edges'])
  cols = min(3, len(names))
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(4.5 * cols, 3.3 * rows), layout='constrained')
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  held = lh['lines'][REAL_HELDOUT]
  for ax, n in zip(axes, names):
    ax.stairs(lh['density'][n], edges, fill=True, alpha=0.5, label=n)
    if n != REAL_HELDOUT:
      ax.stairs(lh['density'][REAL_HELDOUT], edges, color='k', lw=0.8, label=REAL_HELDOUT)
    ln = lh['lines'][n]
    ax.axvline(ln['var99'], color='C3', label=f'VaR99 {ln["var99"]:.3f}')
    ax.axvline(ln['es975'], color='C3', ls='--', label=f'ES97.5 {ln["es975"]:.3f}')
    if n != REAL_HELDOUT:
      ax.axvline(held['var99'], color='k', lw=0.8)
      ax.axvline(held['es975'], color='k', lw=0.8, ls='--')
    ax.set_yscale('log')
    ax.set_title(n, fontsize=9)
    ax.set_xlabel('20-day equal-weight loss', fontsize=8)
    ax.legend(fontsize=6)
  for ax in axes[len(names):]:
    ax.axis('off')
  paths.append(out / 'loss_hist.png')
  fig.savefig(paths[-1], dpi=110)
  return paths


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike,
                 plots: bool = True) -> dict[str, Path]:
  """Writes market_report.json, market_report.md (and the PNGs) into out_dir."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {'json': out / 'market_report.json', 'md': out / 'market_report.md'}
  with open(paths['json'], 'w') as f:
    f.write(files.json_text(report, str(paths['json']), indent=1) + '\n')
  paths['md'].write_text(render_markdown(report))
  if plots:
    for p in write_plots(report, out):
      paths[p.stem] = p
  return paths
