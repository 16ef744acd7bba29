"""A tiny market config end to end on a 2-year slice (2007 trains, 2008 is held out):
train F then G through the main job's market table, then sample, eval, stress and
likelihood on the run. Seconds of training; every output names its data and caveats."""
import json
import math

import jax
import numpy as np
import pytest

from biflow_jax import config_lib, main as main_lib
from biflow_jax.data import market
from biflow_jax.models import base_density
from biflow_jax.modes import market as market_modes
from market_util import tiny_market_config


def _no_nan(path):
  # json.load accepts NaN/Infinity; a file written with allow_nan=False has none.
  text = path.read_text()
  for token in ('NaN', 'Infinity'):
    assert token not in text, f'{path} holds {token}'
  return json.loads(text)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = tiny_market_config()
  workdir = tmp_path_factory.mktemp('market_run')
  market_modes.mode('train')(config, str(workdir))
  return config, workdir


def test_train_runs_both_phases_and_times_them(run):
  config, workdir = run
  record = _no_nan(workdir / 'market_train.json')
  assert [p['phase'] for p in record['phases']] == ['forward', 'reverse']
  assert [p['steps_this_invocation'] for p in record['phases']] == [30, 20]
  assert all(p['steps_per_s_incl_compile'] > 0 and p['load_before']['cpus'] >= 1
             for p in record['phases'])
  # Resuming a finished run trains nothing more and keeps the record.
  market_modes.train(config, workdir)
  assert len(_no_nan(workdir / 'market_train.json')['phases']) == 2


def test_sample_writes_raw_log_return_scenarios_with_provenance(run):
  config, workdir = run
  path = market_modes.mode('sample')(config, str(workdir))
  with np.load(path) as f:
    x, labels, assets = f['scenarios'], f['labels'], f['assets']
    meta = json.loads(str(f['provenance']))
  assert x.shape == (config.sample.num, 20, 20) and np.all(np.isfinite(x))
  assert np.abs(x).max() < 1.0  # daily log returns, not standardised or whitened numbers
  assert labels.min() >= 0 and labels.max() < 3
  assert list(assets) == list(market.load_prices().assets)
  assert meta['data']['sha256'] == market.shipped_metadata()['sha256']
  assert meta['split']['name'] == 'interleaved' and meta['split']['heldout_years'] == [2008]
  assert meta['not_modelled'] == market.NOT_MODELLED and meta['disclaimer'] == market.NOT_ADVICE
  assert _no_nan(path.with_suffix('.json'))['scenarios']['decoder'] == 'reverse'


def test_eval_reports_g_exact_inverse_baselines_and_speed(run):
  config, workdir = run
  md = market_modes.mode('eval')(config, str(workdir))
  report = _no_nan(md.with_suffix('.json'))
  assert {'G', 'F_exact', 'iid_gaussian', 'day_bootstrap', 'real_heldout'} <= set(report['sets'])
  assert report['sets']['G']['n_windows'] == config.market_eval.num_samples
  speed = report['meta']['speed']
  assert speed['G (1 NFE)']['scenarios_per_s'] > 0 and speed['F exact inverse']['scenarios_per_s'] > 0
  nll = report['nll']['models']
  for name in ('F (conditional)', 'F (marginal)'):
    raw, std = nll[name]['raw']['value'], nll[name]['standardised']['value']
    assert math.isfinite(raw) and raw == pytest.approx(std + report['nll']['jacobian_per_dim'])
  assert (md.parent / 'qq.png').is_file()
  assert market.NOT_ADVICE in md.read_text()


@pytest.mark.slow  # every stress method (~35 s); test_market_stress covers each method
def test_stress_runs_every_method_with_probabilities_beside_it(run, tmp_path):
  config, workdir = run
  weights = tmp_path / 'w.json'
  weights.write_text(json.dumps([1.0] + [0.0] * 19))  # all in AAPL
  config.stress.weights = str(weights)
  md = market_modes.mode('stress')(config, str(workdir))
  rep = _no_nan(md.with_suffix('.json'))
  assert rep['portfolio_weights'][0] == 1.0 and rep['not_modelled'] == market.NOT_MODELLED
  assert [c['name'] for c in rep['crises']] == ['October 2008']  # March 2020 is not in the slice
  tn = rep['tail_noise']['rows']
  assert [r['temperature'] for r in tn] == [1.0, 1.5]
  assert tn[1]['gaussian_cost_nats'] == pytest.approx((1.5 ** 2 - 1) * 400 / 2)
  # The tiny config's base is Student-t: scaling its heavy tails costs less than the Gaussian.
  assert 0 < tn[1]['measured_mean_log_density_drop_nats'] < tn[1]['gaussian_cost_nats']
  cond = rep['condition']['rows']
  assert cond[-1]['condition'].startswith('before October 2008') and cond[-1]['beyond_training_range']
  for row in rep['importance']['rows']:
    assert 0 < row['ess'] <= config.stress.num and row['mc']['var'] > 0
  rv = rep['reverse']
  assert all(r['inside_region'] for r in rv['rows'])
  # The tiny config's base is Student-t: the region is a level set of its density holding
  # probability q of fresh base draws (a Gaussian base's would be the chi2 ball).
  region = rv['region']
  assert region['kind'] == 'level' and region['base'] == 'student_t' and region['d'] == 400
  z = base_density.host_sample(jax.random.PRNGKey(7), (20_000, 400), 'student_t', region['nu'])
  inside = np.mean(np.asarray(base_density.log_prob(z, 'student_t', region['nu'])) >= region['log_p_min'])
  assert inside == pytest.approx(region['q'], abs=0.005)
  assert rv['worst']['loss_20d'] == pytest.approx(rv['worst']['loss_check'], rel=1e-3, abs=1e-4)
  assert rv['worst']['nearest_history']['start'] >= '2007-01-01'
  bt = rep['backtest']
  assert bt['days'] == int(market.load_dataset(start='2007-01-01', end='2008-12-31').test_days.sum())
  assert set(bt['conditional']['traffic_light']['counts']) == {'green', 'yellow', 'red'}
  assert market.NOT_ADVICE in md.read_text()


def test_likelihood_scores_every_window_of_a_prices_csv(run, tmp_path):
  config, workdir = run
  prices = market.load_prices()
  keep = (prices.dates >= np.datetime64('2020-01-02')) & (prices.dates <= np.datetime64('2020-04-30'))
  csv = tmp_path / 'spring2020.csv'
  lines = ['Date,' + ','.join(prices.assets)]
  lines += [f'{d},' + ','.join(f'{v:.4f}' for v in row)
            for d, row in zip(prices.dates[keep], prices.values[keep])]
  csv.write_text('\n'.join(lines) + '\n')
  config.likelihood.input = str(csv)
  out = market_modes.mode('likelihood')(config, str(workdir))
  rows = out.read_text().splitlines()
  n_returns = int(keep.sum()) - 1
  assert len(rows) - 1 == n_returns - 20 - 20 + 1  # stride 1, 20 days of history first
  summary = _no_nan(out.with_suffix('.json'))
  worst = summary['most_unusual'][0]
  assert worst['start'].startswith('2020-0') and 0 <= worst['percentile_marginal'] <= 100
  assert summary['input']['sha256'] and summary['data']['sha256']


def test_the_main_table_picks_market_modes_and_refuses_the_others(run):
  config, _ = run
  assert market_modes.is_market(config)
  assert 'stress' in main_lib.MODES
  with pytest.raises(ValueError, match='not available for a market config'):
    market_modes.mode('export')
  with pytest.raises(ValueError, match='needs a market config'):
    main_lib.MODES['stress'][1](config_lib.base_config(), '/tmp/unused')
