"""Post-hoc EMA (training/posthoc_ema.py; EDM2, Karras et al. 2024): the profile maths, the
tracked EMAs' update rule, snapshots that resume exactly, and reconstruction in tools/sweep."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax import config_lib
from biflow_jax.tools import sweep
from biflow_jax.training import checkpoints, posthoc_ema, restore, train
from subprocess_util import python
from test_train import TINY, parse_config


CHILD = Path(__file__).parent / 'multidevice' / 'train_child.py'


# --------------------------------------------------------------------------- the maths

@pytest.mark.parametrize('sigma_rel', [0.03, 0.05, 0.0905, 0.1, 0.19, 0.28])
def test_sigma_rel_and_gamma_are_inverse(sigma_rel):
  gamma = posthoc_ema.sigma_rel_to_gamma(sigma_rel)
  assert gamma >= 0
  assert posthoc_ema.gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-9)


def test_our_default_ema_is_the_power_ema_of_width_0_09():
  """ema_warmup c = 10 weighs update k as k**(c - 2) = k**8: sigma_rel 0.0905 (EDM2 eq. 3);
  EDM2's own tracked widths 0.05 and 0.10 are gamma 16.97 and 6.94."""
  assert posthoc_ema.gamma_to_sigma_rel(8.0) == pytest.approx(0.0905, abs=1e-4)
  assert posthoc_ema.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert posthoc_ema.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


def test_the_power_ema_weighs_update_k_as_k_to_the_gamma():
  """The recursion's weights on updates 1..n equal (gamma+1) k**gamma / n**(gamma+1) to
  first order: their centre of mass is n (gamma+1)/(gamma+2) and their relative spread
  sigma_rel."""
  gamma, n = 6.94, 4000
  weights = np.zeros(n + 1)
  for step in range(1, n + 1):
    beta = posthoc_ema.power_ema_decay(step, gamma)
    weights *= beta
    weights[step] = 1 - beta
  k = np.arange(n + 1) / n
  assert weights.sum() == pytest.approx(1.0, abs=1e-12)
  mean = (weights * k).sum()
  assert mean == pytest.approx((gamma + 1) / (gamma + 2), rel=1e-3)
  spread = np.sqrt((weights * (k - mean) ** 2).sum())
  assert spread == pytest.approx(posthoc_ema.gamma_to_sigma_rel(gamma), rel=5e-3)


def _tracked_sequence(theta, gamma):
  ema, out = theta[0].copy(), {}
  for n in range(1, len(theta)):
    beta = posthoc_ema.power_ema_decay(n, gamma)
    ema = beta * ema + (1 - beta) * theta[n]
    out[n] = ema.copy()
  return out


@pytest.mark.parametrize('target', [0.04, 0.07, 0.15, 0.2])
def test_snapshots_of_two_emas_rebuild_an_ema_of_another_width(target):
  """A random walk of params; snapshots of EMAs at 0.05 and 0.10 every 25 updates; the
  least-squares combination for another width equals that EMA tracked directly, to well
  under 1% of how far the EMA is from the last iterate."""
  rng = np.random.default_rng(0)
  updates = 1000
  theta = np.cumsum(rng.normal(size=(updates + 1, 4)), axis=0)
  stored = {s: _tracked_sequence(theta, posthoc_ema.sigma_rel_to_gamma(s)) for s in (0.05, 0.1)}
  ts, gammas, sources = [], [], []
  for n in range(25, updates + 1, 25):
    for s in (0.05, 0.1):
      ts.append(n)
      gammas.append(posthoc_ema.sigma_rel_to_gamma(s))
      sources.append(stored[s][n])
  x, error = posthoc_ema.solve_weights(ts, gammas, updates, posthoc_ema.sigma_rel_to_gamma(target))
  rebuilt = sum(w * src for w, src in zip(x, sources))
  direct = _tracked_sequence(theta, posthoc_ema.sigma_rel_to_gamma(target))[updates]
  lag = np.abs(theta[updates] - direct).max()
  assert error < 0.01
  assert sum(x) == pytest.approx(1.0, abs=1e-3)
  assert np.abs(rebuilt - direct).max() < 1e-3 * lag


def test_a_stored_width_is_rebuilt_exactly():
  ts, gammas = [50, 50, 100, 100], [16.97, 6.94, 16.97, 6.94]
  x, error = posthoc_ema.solve_weights(ts, gammas, 100, 6.94)
  assert error < 1e-6
  np.testing.assert_allclose(x, [0, 0, 0, 1], atol=1e-6)


def test_the_tracked_update_is_the_power_ema_and_ignores_skipped_steps():
  gamma = posthoc_ema.sigma_rel_to_gamma(0.1)
  params = {'reverse': {'w': jnp.full((3,), 2.0)}}
  tracked = {'reverse': {'n': jnp.int32(4), 'emas': [{'w': jnp.zeros((3,))}]}}
  gammas = {'reverse': (gamma,)}
  moved = posthoc_ema._update(tracked, params, {'reverse': jnp.int32(5)}, gammas)
  beta = (1 - 1 / 5) ** (gamma + 1)
  np.testing.assert_allclose(moved['reverse']['emas'][0]['w'], 2.0 * (1 - beta), rtol=1e-6)
  assert int(moved['reverse']['n']) == 5
  skipped = posthoc_ema._update(tracked, params, {'reverse': jnp.int32(4)}, gammas)
  np.testing.assert_array_equal(skipped['reverse']['emas'][0]['w'], 0.0)
  first = posthoc_ema._update({'reverse': {'n': jnp.int32(0), 'emas': [{'w': jnp.zeros(3)}]}},
                              params, {'reverse': jnp.int32(1)}, gammas)
  np.testing.assert_array_equal(first['reverse']['emas'][0]['w'], 2.0)  # beta_1 = 0


# --------------------------------------------------------------------------- config

def test_the_tracker_passes_over_the_training_groups_only(tmp_path):
  """update(state, phase.trainable) leaves a frozen group's EMAs untouched (the very
  arrays: no pass over its params), and gives the values a full update would give."""
  import types
  from biflow_jax.objective import phases
  from biflow_jax.training import optim
  from test_optim import make_config, toy_params
  c = make_config('two_stage', forward_steps=2, reverse_steps=3)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  state = types.SimpleNamespace(params=params, opt_state=tx.init(params))
  grads = jax.tree.map(jnp.ones_like, params)
  trackers = []
  for _ in range(2):
    t = posthoc_ema.Tracker(tmp_path, {'forward': (0.1,), 'reverse': (0.1,)},
                            {'forward': 0, 'reverse': 0})
    t.start(state, 0)
    trackers.append(t)
  only_g, every_group = trackers
  for _ in range(3):
    p, o = optim.apply_gradients(tx, grads, state.opt_state, state.params, ('reverse',))
    state = types.SimpleNamespace(params=p, opt_state=o)
    frozen = only_g.tracked['forward']
    only_g.update(state, ('reverse',))
    assert only_g.tracked['forward'] is frozen
    every_group.update(state)
  assert int(only_g.tracked['reverse']['n']) == 3 and int(only_g.tracked['forward']['n']) == 0
  for a, b in zip(jax.tree.leaves(only_g.tracked), jax.tree.leaves(every_group.tracked)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  only_g.update(state, ())  # a phase that trains neither: nothing to do
  assert only_g.tracked['forward'] is frozen


@pytest.mark.parametrize('override, message', [
    ('--config.optim.reverse.posthoc_sigma_rels=(0.05, 0.4)', r'0\.4 is not in \(0, 0\.28\]'),
    ('--config.optim.reverse.posthoc_sigma_rels=(0.0,)', r'0\.0 is not in'),
    ('--config.optim.reverse.posthoc_sigma_rels=(0.1, 0.1)', 'repeats a value'),
    ('--config.optim.reverse.posthoc_every=-1', 'posthoc_every=-1 must be >= 0'),
])
def test_bad_posthoc_settings_are_refused(override, message):
  config = parse_config(override)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


# --------------------------------------------------------------------------- training

def _config():
  config = parse_config('--config.reverse.enabled=True', '--config.schedule.plan=two_stage',
                        '--config.schedule.forward_steps=4', '--config.schedule.reverse_steps=8',
                        '--config.sample_every=1000', '--config.eval_every=1000',
                        '--config.checkpoint_every=6', '--config.keep_checkpoints=5',
                        '--config.eval.num_samples=20', '--config.eval.batch=20',
                        '--config.eval.is_splits=2', '--config.objective.cfg_w_max=2',
                        '--config.optim.reverse.posthoc_sigma_rels=(0.05, 0.1)',
                        '--config.optim.reverse.posthoc_every=2',
                        '--config.optim.forward.posthoc_sigma_rels=(0.1,)',
                        '--config.optim.forward.posthoc_every=2')
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  whole = tmp_path_factory.mktemp('whole')
  train.train_and_evaluate(_config(), whole)
  resumed = tmp_path_factory.mktemp('resumed')
  train.train_and_evaluate(_config(), resumed, stop_at=6)
  first_leg = posthoc_ema.snapshot_steps(resumed, 'reverse')
  train.train_and_evaluate(_config(), resumed)
  return whole, resumed, first_leg


def test_snapshots_are_written_while_g_trains_and_resume_exactly(runs):
  whole, resumed, first_leg = runs
  # G trains from global step 4: steps 2 and 4 have nothing to average yet.
  assert posthoc_ema.snapshot_steps(whole, 'reverse') == [6, 8, 10, 12]
  assert first_leg == [6]
  assert posthoc_ema.snapshot_steps(resumed, 'reverse') == [6, 8, 10, 12]
  for step in (6, 12):
    a = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(whole, 'reverse', step))
    b = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(resumed, 'reverse', step))
    assert a['n'] == b['n'] == step - 4 and a['sigma_rels'] == (0.05, 0.1)
    for ema_a, ema_b in zip(a['emas'], b['emas']):
      assert set(ema_a) == set(ema_b)
      for name in ema_a:
        np.testing.assert_array_equal(ema_a[name], ema_b[name], err_msg=name)
  # F trains steps 1-4: nothing is written for it once it stops (its EMAs stay as they
  # were), and the resumed run took F's from step 4's snapshot.
  assert posthoc_ema.snapshot_steps(whole, 'forward') == [2, 4]
  assert posthoc_ema.snapshot_steps(resumed, 'forward') == [2, 4]
  a = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(whole, 'forward', 4))
  b = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(resumed, 'forward', 4))
  assert a['n'] == b['n'] == 4
  for name in a['emas'][0]:
    np.testing.assert_array_equal(a['emas'][0][name], b['emas'][0][name], err_msg=name)


def test_a_stored_width_is_rebuilt_from_the_run_and_others_differ(runs):
  whole, _, _ = runs
  _, state, step = restore.restore_run(_config(), whole)
  template = jax.device_get(state.params['reverse'])
  stored = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(whole, 'reverse', step))
  rebuilt = posthoc_ema.reconstruct(whole, 'reverse', 0.1, step, template)
  assert rebuilt.updates == 8 and rebuilt.snapshots == 4 and rebuilt.relative_error < 1e-6
  flat = checkpoints.named_leaves(rebuilt.params)
  for name, value in stored['emas'][1].items():
    np.testing.assert_allclose(flat[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  wider = posthoc_ema.reconstruct(whole, 'reverse', 0.2, step, template)
  other = checkpoints.named_leaves(wider.params)
  assert any(not np.allclose(other[n], v) for n, v in stored['emas'][1].items())


def test_sweep_samples_the_rebuilt_average(runs, tmp_path):
  whole, _, _ = runs
  config = _config()
  result = sweep.sweep(config, whole, 'reverse', budget=1, ws=[1.0], ts=[1.0], out=tmp_path,
                       command='test', ema_sigma_rel=0.15)
  assert result['posthoc_ema']['sigma_rel'] == 0.15
  assert result['posthoc_ema']['snapshots'] == 4
  saved = json.loads((tmp_path / 'sweep_reverse_ema0.15.json').read_text())
  assert saved['cells'][0]['frechet_distance'] == result['cells'][0]['frechet_distance']
  assert "post-hoc EMA, sigma_rel 0.15" in (tmp_path / 'sweep_reverse_ema0.15.md').read_text()
  plain = sweep.sweep(config, whole, 'reverse', budget=1, ws=[1.0], ts=[1.0], out=tmp_path)
  assert 'posthoc_ema' not in plain
  assert plain['cells'][0]['frechet_distance'] != result['cells'][0]['frechet_distance']
  exact = sweep.make_scorer(config, whole, 'exact', ema_sigma_rel=0.1)[1]['posthoc_ema']
  assert exact['group'] == 'forward' and exact['updates'] == 4  # F's state at step 12
  assert exact['profile_relative_error'] < 1e-6  # a width F tracked
  with pytest.raises(FileNotFoundError, match=r"posthoc_sigma_rels=\(0.05, 0.10\)"):
    posthoc_ema.reconstruct(tmp_path, 'reverse', 0.1, 12, {})  # a run that kept none
  with pytest.raises(ValueError, match=r'ema_sigma_rel=0.5 is not in'):
    sweep.sweep(config, whole, 'reverse', 1, ws=[1.0], ts=[1.0], ema_sigma_rel=0.5)


def test_missing_and_damaged_snapshots_are_clear_errors(runs, tmp_path):
  whole, _, _ = runs
  broken = tmp_path / 'broken.npz'
  broken.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a readable post-hoc EMA snapshot'):
    posthoc_ema.load_snapshot(broken)
  # A run whose checkpoint has no snapshot to resume the tracked EMAs from.
  copy = tmp_path / 'copy'
  shutil.copytree(whole, copy)
  (copy / posthoc_ema.DIRECTORY / 'reverse' / '12.npz').unlink()
  config = _config()
  config.schedule.reverse_steps = 10
  resumes_from = r"'reverse' at update 8 .*10\.npz, at update 6.*posthoc_sigma_rels=\(\)"
  with pytest.raises(FileNotFoundError, match=resumes_from):
    train.train_and_evaluate(config, copy)


@pytest.mark.slow  # a 4-device subprocess run beside a 1-device one (~80 s on 2 cores)
def test_fsdp_sharded_tracking_equals_one_device(tmp_path):
  """F's post-hoc EMAs on 4 devices with FSDP-sharded params (a child process) equal the
  same run's on one device: the update follows the params' shardings and the snapshot
  gathers them."""
  posthoc = ['--config.schedule.forward_steps=6', '--config.checkpoint_every=6',
             '--config.optim.forward.posthoc_sigma_rels=(0.05, 0.1)',
             '--config.optim.forward.posthoc_every=3']
  python(CHILD, '4', tmp_path / 'fsdp', '0', TINY, *posthoc, '--config.mesh.fsdp=4',
         '--config.mesh.param_sharding=fsdp', '--config.mesh.fsdp_min_size=256', timeout=600)
  train.train_and_evaluate(parse_config(*posthoc), tmp_path / 'one')
  for step in (3, 6):
    a = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(tmp_path / 'fsdp', 'forward', step))
    b = posthoc_ema.load_snapshot(posthoc_ema.snapshot_path(tmp_path / 'one', 'forward', step))
    assert a['n'] == b['n'] == step
    for ema_a, ema_b in zip(a['emas'], b['emas']):
      for name in ema_b:
        np.testing.assert_allclose(ema_a[name], ema_b[name], atol=1e-5, err_msg=name)
