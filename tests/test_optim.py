"""Tests for biflow_jax.optim: groups, phase plan, schedules, freezing, EMA, clipping."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from biflow_jax import config_lib
from biflow_jax.objective import phases
from biflow_jax.training import optim


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def toy_params(with_reverse: bool = True) -> dict:
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {'forward': {
      'dense': {'kernel': jax.random.normal(k1, (3, 4)), 'bias': jnp.full((4,), 0.5, jnp.float32)},
      'norm': {'scale': jnp.ones((4,))},
      'embed': {'embedding': jax.random.normal(k2, (5, 4))},
  }}
  if with_reverse:
    params['reverse'] = {
        'dense': {'kernel': jax.random.normal(k3, (4, 3)), 'bias': jnp.full((3,), -0.5, jnp.float32)}}
  return params


def toy_targets(params: dict) -> dict:
  return jax.tree.map(lambda x: jnp.full_like(x, 2.0), params)


def toy_loss(params: dict, targets: dict) -> jax.Array:
  """Quadratic in every parameter of both groups, so every group has a gradient."""
  sq = jax.tree.map(lambda p, t: jnp.sum((p - t) ** 2), params, targets)
  return sum(jax.tree.leaves(sq))


def make_config(plan: str = 'two_stage', forward_steps: int = 20, joint_steps: int = 0,
                reverse_steps: int = 20, reverse_enabled: bool = True):
  c = config_lib.base_config()
  c.reverse.enabled = reverse_enabled
  c.schedule.plan = plan
  c.schedule.forward_steps = forward_steps
  c.schedule.joint_steps = joint_steps
  c.schedule.reverse_steps = reverse_steps
  for group in ('forward', 'reverse'):
    g = getattr(c.optim, group)
    g.lr = 1e-2
    g.warmup_steps = 5
    g.min_lr_ratio = 0.1
    g.ema_decay = 0.9
  return c


def tree_equal(a, b) -> bool:
  """Bit-identical: same structure and same bytes in every leaf."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def adam_state(opt_state, group: str) -> optax.ScaleByAdamState:
  inner = opt_state.inner_states[group]
  found = [s for s in jax.tree.leaves(
      inner, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0]


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------

def test_param_labels_follow_top_level_key():
  labels = optim.param_labels(toy_params())
  assert labels['forward']['dense']['kernel'] == 'forward'
  assert labels['forward']['norm']['scale'] == 'forward'
  assert labels['reverse']['dense']['bias'] == 'reverse'
  assert set(jax.tree.leaves(labels)) == {'forward', 'reverse'}
  assert jax.tree.structure(labels) == jax.tree.structure(toy_params())


def test_param_labels_without_reverse():
  labels = optim.param_labels(toy_params(with_reverse=False))
  assert set(jax.tree.leaves(labels)) == {'forward'}


def test_param_labels_unknown_key_errors():
  params = toy_params()
  params['decoder'] = {'w': jnp.ones(2)}
  with pytest.raises(ValueError, match='decoder'):
    optim.param_labels(params)


def test_decay_mask_only_kernels():
  mask = optim.decay_mask(toy_params())
  assert mask['forward']['dense']['kernel']
  assert not mask['forward']['dense']['bias']
  assert not mask['forward']['norm']['scale']
  assert not mask['forward']['embed']['embedding']   # 2-D but an embedding
  assert mask['reverse']['dense']['kernel']


# --------------------------------------------------------------------------
# Phase plan
# --------------------------------------------------------------------------

def test_plan_forward_only():
  c = make_config('forward_only', forward_steps=30, reverse_steps=0, reverse_enabled=False)
  c.objective.nll_weight = 2.0
  plan = phases.build_phase_plan(c)
  assert len(plan) == 1
  (p,) = plan
  assert (p.name, p.start, p.end, p.trainable) == ('forward', 0, 30, ('forward',))
  assert p.weights == {'nll': 2.0, 'reverse': 0.0}
  assert phases.total_steps(plan) == 30
  assert phases.group_train_steps(plan, 'forward') == 30
  assert phases.group_train_steps(plan, 'reverse') == 0


def test_plan_two_stage():
  c = make_config('two_stage', forward_steps=10, reverse_steps=7)
  c.objective.reverse_weight = 0.5
  plan = phases.build_phase_plan(c)
  assert [(p.name, p.start, p.end, p.trainable) for p in plan] == [
      ('forward', 0, 10, ('forward',)), ('reverse', 10, 17, ('reverse',))]
  assert plan[0].weights == {'nll': 1.0, 'reverse': 0.0}
  assert plan[1].weights == {'nll': 0.0, 'reverse': 0.5}
  assert phases.group_train_steps(plan, 'forward') == 10
  assert phases.group_train_steps(plan, 'reverse') == 7


def test_plan_progressive():
  c = make_config('progressive', forward_steps=10, joint_steps=5, reverse_steps=3)
  plan = phases.build_phase_plan(c)
  assert [(p.name, p.start, p.end, p.trainable) for p in plan] == [
      ('forward', 0, 10, ('forward',)),
      ('joint', 10, 15, ('forward', 'reverse')),
      ('reverse', 15, 18, ('reverse',))]
  assert plan[1].weights == {'nll': 1.0, 'reverse': 1.0}
  assert phases.group_train_steps(plan, 'forward') == 15
  assert phases.group_train_steps(plan, 'reverse') == 8
  assert [phases.phase_index_at(plan, s) for s in (0, 9, 10, 14, 15, 17, 18, 1000)] == [
      0, 0, 1, 1, 2, 2, 2, 2]
  assert phases.phase_at(plan, 12).name == 'joint'
  with pytest.raises(ValueError):
    phases.phase_index_at(plan, -1)


def test_plan_drops_zero_step_phases():
  plan = phases.build_phase_plan(
      make_config('progressive', forward_steps=0, joint_steps=5, reverse_steps=3))
  assert [(p.name, p.start, p.end) for p in plan] == [('joint', 0, 5), ('reverse', 5, 8)]
  plan = phases.build_phase_plan(make_config('two_stage', forward_steps=4, reverse_steps=0))
  assert [p.name for p in plan] == ['forward']


def test_phase_is_hashable_and_static():
  plan = phases.build_phase_plan(make_config())
  assert len({*plan, *phases.build_phase_plan(make_config())}) == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan[0].start = 3


@pytest.mark.parametrize('overrides, field', [
    (dict(forward_steps=-1), 'forward_steps'),
    (dict(reverse_steps=-5), 'reverse_steps'),
    (dict(plan='three_stage'), 'plan'),
    (dict(forward_steps=0, reverse_steps=0), 'forward_steps'),   # trains nothing
    (dict(plan='forward_only', reverse_steps=5), 'reverse_steps'),  # unused field
    (dict(plan='two_stage', joint_steps=5), 'joint_steps'),      # unused field
    (dict(reverse_enabled=False), 'reverse.enabled'),
    (dict(plan='progressive', forward_steps=0, joint_steps=3, reverse_steps=0,
          reverse_enabled=False), 'reverse.enabled'),
])
def test_plan_bad_configs(overrides, field):
  kwargs = dict(plan='two_stage', forward_steps=10, joint_steps=0, reverse_steps=10)
  kwargs.update(overrides)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')) as info:
    phases.build_phase_plan(make_config(**kwargs))
  if field == 'reverse.enabled':
    assert 'forward_only' in str(info.value)
    assert 'enable the reverse model' in str(info.value)


def test_plan_bad_weights():
  c = make_config()
  c.objective.reverse_weight = 0.0
  with pytest.raises(ValueError, match='reverse_weight'):
    phases.build_phase_plan(c)
  c = make_config()
  c.objective.nll_weight = -1.0
  with pytest.raises(ValueError, match='nll_weight'):
    phases.build_phase_plan(c)


# --------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------

def test_lr_schedule_shape():
  c = make_config('two_stage', forward_steps=50, reverse_steps=20)
  g = c.optim.forward
  sched = optim.lr_schedule(g, 50)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(2)), g.lr * 2 / 5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(5)), g.lr, rtol=1e-6)          # peak
  np.testing.assert_allclose(float(sched(49)), g.lr * g.min_lr_ratio, rtol=1e-5)  # last step
  np.testing.assert_allclose(float(sched(500)), g.lr * g.min_lr_ratio, rtol=1e-5)
  values = np.array([float(sched(i)) for i in range(5, 50)])
  assert np.all(np.diff(values) <= 1e-9)   # monotone decay after warmup


@pytest.mark.parametrize('steps', [1, 2, 3])
def test_lr_schedule_tiny_runs_are_finite(steps):
  sched = optim.lr_schedule(make_config().optim.forward, steps)
  values = [float(sched(i)) for i in range(5)]
  assert all(np.isfinite(values))
  assert max(values) == pytest.approx(1e-2)


def test_lr_of_a_group_that_never_trains_is_zero():
  sched = optim.lr_schedule(make_config().optim.reverse, 0)
  assert [float(sched(i)) for i in range(3)] == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------
# Training with frozen groups
# --------------------------------------------------------------------------

def make_train_step(tx, config, plan, trace_counter: list | None = None):
  """A train step like the real one: jitted, phase static, EMA with warm-up."""
  @functools.partial(jax.jit, static_argnums=4)
  def step(params, opt_state, ema, targets, phase: phases.Phase):
    if trace_counter is not None:
      trace_counter.append(phase.name)   # runs only while tracing
    grads = jax.grad(toy_loss)(params, targets)
    params, opt_state = optim.apply_gradients(tx, grads, opt_state, params, phase.trainable)
    ema = optim.update_ema(ema, params, config, phase.trainable,
                           steps=optim.group_steps(opt_state))
    return params, opt_state, ema, optim.learning_rates(opt_state, config, plan)
  return step


def test_frozen_group_is_bit_identical_then_trains():
  c = make_config('two_stage', forward_steps=6, reverse_steps=4)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  targets = toy_targets(params)
  opt_state = tx.init(params)
  ema = optim.init_ema(params)
  traces: list = []
  step = make_train_step(tx, c, plan, traces)

  init_params, init_state, init_ema = params, opt_state, ema
  structure = jax.tree.structure(opt_state)
  lrs = None
  for s in range(plan[0].start, plan[0].end):
    params, opt_state, ema, lrs = step(params, opt_state, ema, targets,
                                       phases.phase_at(plan, s))
  # F moved; G, its optimizer state and its EMA did not move at all.
  assert not tree_equal(params['forward'], init_params['forward'])
  assert not tree_equal(ema['forward'], init_ema['forward'])
  assert tree_equal(params['reverse'], init_params['reverse'])
  assert tree_equal(ema['reverse'], init_ema['reverse'])
  assert tree_equal(opt_state.inner_states['reverse'], init_state.inner_states['reverse'])
  counts = optim.group_steps(opt_state)
  assert int(counts['forward']) == 6 and int(counts['reverse']) == 0
  assert jax.tree.structure(opt_state) == structure
  # F trained its whole schedule: the next F lr would be the floor; G's is at 0.
  np.testing.assert_allclose(float(lrs['forward']), 1e-3, rtol=1e-5)
  assert float(lrs['reverse']) == 0.0

  # Phase 2: G trains from its own step 0; F is frozen bit-identically.
  f_params, f_state, f_ema = params['forward'], opt_state.inner_states['forward'], ema['forward']
  r_before = params['reverse']
  for s in range(plan[1].start, plan[1].end):
    params, opt_state, ema, lrs = step(params, opt_state, ema, targets,
                                       phases.phase_at(plan, s))
  assert tree_equal(params['forward'], f_params)
  assert tree_equal(opt_state.inner_states['forward'], f_state)
  assert tree_equal(ema['forward'], f_ema)
  assert not tree_equal(params['reverse'], r_before)
  # G moved toward its target (the loss of G decreased).
  r_loss = lambda p: float(sum(jnp.sum((x - 2.0) ** 2) for x in jax.tree.leaves(p)))
  assert r_loss(params['reverse']) < r_loss(r_before)
  counts = optim.group_steps(opt_state)
  assert int(counts['forward']) == 6 and int(counts['reverse']) == 4
  assert jax.tree.structure(opt_state) == structure
  # Compiled exactly once per phase.
  assert traces == ['forward', 'reverse']


def test_compiles_once_per_phase_progressive():
  c = make_config('progressive', forward_steps=3, joint_steps=3, reverse_steps=3)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  targets = toy_targets(params)
  opt_state, ema = tx.init(params), optim.init_ema(params)
  traces: list = []
  step = make_train_step(tx, c, plan, traces)
  for s in range(phases.total_steps(plan) + 2):   # over-run stays in the last phase
    params, opt_state, ema, _ = step(params, opt_state, ema, targets, phases.phase_at(plan, s))
  assert traces == ['forward', 'joint', 'reverse']
  counts = optim.group_steps(opt_state)
  assert int(counts['forward']) == 6 and int(counts['reverse']) == 8


def test_learning_rates_read_from_opt_state():
  c = make_config('two_stage', forward_steps=20, reverse_steps=10)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  lrs = optim.learning_rates(opt_state, c, plan)
  assert float(lrs['forward']) == 0.0 and float(lrs['reverse']) == 0.0
  apply = jax.jit(optim.apply_gradients, static_argnums=(0, 4))
  for _ in range(5):   # warmup_steps
    params, opt_state = apply(tx, grads, opt_state, params, ('forward',))
  lrs = optim.learning_rates(opt_state, c, plan)
  np.testing.assert_allclose(float(lrs['forward']), 1e-2, rtol=1e-6)
  assert float(lrs['reverse']) == 0.0
  for _ in range(14):  # to count 19 = the forward group's last step
    params, opt_state = apply(tx, grads, opt_state, params, ('forward',))
  np.testing.assert_allclose(float(optim.learning_rates(opt_state, c, plan)['forward']),
                             1e-3, rtol=1e-5)
  # The reverse schedule has its own length (10 steps).
  for _ in range(9):
    params, opt_state = apply(tx, grads, opt_state, params, ('reverse',))
  np.testing.assert_allclose(float(optim.learning_rates(opt_state, c, plan)['reverse']),
                             1e-3, rtol=1e-5)


def test_absent_reverse_group():
  c = make_config('forward_only', forward_steps=5, reverse_steps=0, reverse_enabled=False)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params(with_reverse=False)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  new_params = params
  for _ in range(2):   # update 0 uses lr(0) = 0 (warmup), update 1 moves
    new_params, opt_state = optim.apply_gradients(tx, grads, opt_state, new_params, ('forward',))
  assert not tree_equal(new_params, params)
  assert set(new_params) == {'forward'}
  assert set(optim.learning_rates(opt_state, c, plan)) == {'forward', 'reverse'}
  ema = optim.update_ema(optim.init_ema(params), new_params, c, ('forward',))
  assert set(ema) == {'forward'}
  with pytest.raises(ValueError, match='reverse'):
    optim.apply_gradients(tx, grads, opt_state, params, ('forward', 'reverse'))


# --------------------------------------------------------------------------
# Clipping, weight decay, EMA, grad norms
# --------------------------------------------------------------------------

def test_clipping_is_per_group():
  c = make_config()
  c.optim.forward.grad_clip = 1.0
  c.optim.reverse.grad_clip = 1.0
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  opt_state = tx.init(params)
  grads = {'forward': jax.tree.map(lambda x: jnp.full_like(x, 1e6), params['forward']),
           'reverse': jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params['reverse'])}
  _, new_state = optim.apply_gradients(tx, grads, opt_state, params, ('forward', 'reverse'))
  b1 = c.optim.forward.b1
  # Adam's first moment holds the clipped gradient: (1 - b1) * clipped.
  mu_r = adam_state(new_state, 'reverse').mu['reverse']
  for m, g in zip(jax.tree.leaves(mu_r), jax.tree.leaves(grads['reverse'])):
    np.testing.assert_allclose(np.asarray(m), (1 - b1) * np.asarray(g), rtol=1e-6)
  mu_f = adam_state(new_state, 'forward').mu['forward']
  np.testing.assert_allclose(float(optim.group_grad_norms({'forward': mu_f})['forward']),
                             (1 - b1) * 1.0, rtol=1e-5)


def test_weight_decay_skips_biases_scales_embeddings():
  c = make_config('forward_only', forward_steps=10, reverse_steps=0, reverse_enabled=False)
  c.optim.forward.warmup_steps = 0
  c.optim.forward.weight_decay = 0.5
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = toy_params()
  opt_state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)   # Adam update is 0: only decay acts
  new, _ = optim.apply_gradients(tx, zeros, opt_state, params, ('forward',))
  lr = c.optim.forward.lr
  np.testing.assert_allclose(np.asarray(new['forward']['dense']['kernel']),
                             np.asarray(params['forward']['dense']['kernel']) * (1 - lr * 0.5),
                             rtol=1e-6)
  for path in (('dense', 'bias'), ('norm', 'scale'), ('embed', 'embedding')):
    a, b = new['forward'], params['forward']
    for k in path:
      a, b = a[k], b[k]
    assert tree_equal(a, b), path


def test_ema_decay_and_warmup():
  c = make_config()
  params = toy_params()
  ema = optim.init_ema(params)
  moved = jax.tree.map(lambda x: x + 1.0, params)
  out = optim.update_ema(ema, moved, c, ('forward',))
  d = c.optim.forward.ema_decay
  np.testing.assert_allclose(np.asarray(out['forward']['dense']['bias']),
                             np.asarray(params['forward']['dense']['bias']) + (1 - d), rtol=1e-6)
  assert tree_equal(out['reverse'], ema['reverse'])
  # Warm-up: at count n the decay is min(d, (1+n)/(10+n)).
  steps = {'forward': jnp.array(1, jnp.int32), 'reverse': jnp.array(0, jnp.int32)}
  out = optim.update_ema(ema, moved, c, ('forward',), steps=steps)
  dw = min(d, 2 / 11)
  np.testing.assert_allclose(np.asarray(out['forward']['dense']['bias']),
                             np.asarray(params['forward']['dense']['bias']) + (1 - dw), rtol=1e-6)


@pytest.mark.parametrize('warmup', [4.0, 10.0])
def test_ema_warmup_is_a_power_function_average(warmup):
  """Until ema_decay binds, the EMA after N updates weighs update k's params about as
  k**(c - 2) (EDM2's power EMA): fed one-hot params, it returns its own weights."""
  c = make_config()
  c.optim.forward.ema_decay = 0.9999  # never binds in 400 updates
  c.optim.forward.ema_warmup = warmup
  n = 400
  ema = {'forward': {'w': jnp.zeros(n)}, 'reverse': {}}
  update = jax.jit(lambda e, p, k: optim.update_ema(
      e, p, c, ('forward',), steps={'forward': k, 'reverse': jnp.int32(0)}))
  for k in range(1, n + 1):
    ema = update(ema, {'forward': {'w': jax.nn.one_hot(k - 1, n)}, 'reverse': {}}, jnp.int32(k))
  weights = np.asarray(ema['forward']['w'], np.float64)
  assert weights.sum() == pytest.approx(1.0, abs=1e-4)  # the init's weight is 0 after update 1
  # Exactly: w_k = (1 - d_k) prod_{m > k} d_m with d_m = (1 + m) / (c + m) ...
  decays = (1.0 + np.arange(1, n + 1)) / (warmup + np.arange(1, n + 1))
  later = np.append(np.cumprod(decays[::-1])[::-1][1:], 1.0)
  np.testing.assert_allclose(weights, (1 - decays) * later, rtol=2e-3, atol=1e-9)
  # ... which grows as k**gamma, gamma = c - 2 (log-log slope over the second half).
  slope = np.log(weights[n - 1] / weights[n // 2 - 1]) / np.log(2.0)
  assert slope == pytest.approx(warmup - 2, rel=0.15)
  # ... and the default (c = 10) is the decay the code had before the field existed.
  if warmup == 10.0:
    del c.optim.forward.ema_warmup  # a config from before the field
    fresh = {'forward': {'w': jnp.zeros(n)}, 'reverse': {}}
    out = optim.update_ema(fresh, {'forward': {'w': jnp.ones(n)}, 'reverse': {}}, c,
                           ('forward',), steps={'forward': jnp.int32(5), 'reverse': jnp.int32(0)})
    np.testing.assert_allclose(out['forward']['w'], 1 - 6 / 15, rtol=1e-6)


def test_group_grad_norms():
  grads = {'forward': {'a': jnp.full((4,), 3.0, jnp.bfloat16), 'b': jnp.array([4.0])},
           'reverse': {}}
  norms = optim.group_grad_norms(grads)
  assert norms['forward'].dtype == jnp.float32
  np.testing.assert_allclose(float(norms['forward']), np.sqrt(4 * 9 + 16), rtol=1e-6)
  assert float(norms['reverse']) == 0.0


# --------------------------------------------------------------------------
# Muon (optim.<group>.algorithm = 'muon')
# --------------------------------------------------------------------------

def muon_config(**kw):
  c = make_config('two_stage', forward_steps=4, reverse_steps=40)
  g = c.optim.reverse
  g.algorithm = 'muon'
  g.warmup_steps = 0
  g.min_lr_ratio = 1.0
  g.weight_decay = 0.0
  g.grad_clip = 0.0
  for k, v in kw.items():
    setattr(g, k, v)
  return c


def test_muon_kernel_update_is_orthogonal_at_adamw_rms_and_other_leaves_take_adam():
  c = muon_config()
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  params = {'forward': {'dense': {'kernel': jnp.ones((3, 4))}},
            'reverse': {'dense': {'kernel': jnp.zeros((32, 64)), 'bias': jnp.zeros((64,))},
                        'pos_embed': jnp.zeros((6, 64))}}
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(3), x.shape), params)
  new, state = optim.apply_gradients(tx, grads, tx.init(params), params, ('reverse',))
  step = np.asarray(new['reverse']['dense']['kernel'])
  # Muon: the first step is -lr * 0.2 sqrt(max(in, out)) * (orthogonalised gradient), so
  # its singular values are (nearly) equal and its RMS is lr * 0.2 (Moonlight's scaling).
  sv = np.linalg.svd(step, compute_uv=False)
  raw = np.linalg.svd(np.asarray(grads['reverse']['dense']['kernel']), compute_uv=False)
  assert raw.max() / raw.min() > 4                 # a Gaussian 32 x 64 matrix's spread
  assert sv.max() / sv.min() < 2.0, sv      # Newton-Schulz's quintic leaves them in ~[0.7, 1.2]
  np.testing.assert_allclose(np.sqrt(np.mean(step ** 2)), 1e-2 * optim.MUON_UPDATE_RMS,
                             rtol=0.25)
  assert float(np.sum(step * np.asarray(grads['reverse']['dense']['kernel']))) < 0  # descent
  # The bias and the positional table take Adam, Nesterov's form as optax.contrib.muon
  # builds it: its first step is -lr * (1 + b1 (1 - b1) / (1 - b1^2)) * sign(g).
  nadam_first = 1 + 0.9 * 0.1 / (1 - 0.81)
  for leaf in (('dense', 'bias'), ('pos_embed',)):
    got = new['reverse']
    g = grads['reverse']
    for k in leaf:
      got, g = got[k], g[k]
    np.testing.assert_allclose(np.asarray(got), -1e-2 * nadam_first * np.sign(np.asarray(g)),
                               rtol=1e-3)
  # F (AdamW, frozen here) untouched; G's own count read as for AdamW.
  assert tree_equal(new['forward'], params['forward'])
  assert int(optim.group_steps(state)['reverse']) == 1
  np.testing.assert_allclose(float(optim.learning_rates(state, c, plan)['reverse']), 1e-2)


def test_muon_dimension_numbers_pick_2d_kernels_only():
  params = toy_params()
  specs = optim.muon_dimension_numbers(params)
  assert specs['forward']['dense']['kernel'] == optax.contrib.MuonDimensionNumbers(0, 1)
  assert specs['forward']['embed']['embedding'] is None
  assert specs['forward']['dense']['bias'] is None and specs['forward']['norm']['scale'] is None


def test_muon_minimises_an_ill_conditioned_regression():
  """A real property, not a smoke test: on an ill-conditioned matrix regression Muon's loss
  falls 20x in 40 steps."""
  c = muon_config(lr=0.2)
  plan = phases.build_phase_plan(c)
  tx = optim.make_optimizer(c, plan)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(k1, (256, 16)) * jnp.logspace(-1, 1, 16)
  w_true = jax.random.normal(k2, (16, 8))
  y = x @ w_true
  params = {'forward': {'dense': {'kernel': jnp.zeros((2, 2))}},
            'reverse': {'dense': {'kernel': jnp.zeros((16, 8)), 'bias': jnp.zeros((8,))}}}

  def loss(p):
    d = p['reverse']['dense']
    return jnp.mean((x @ d['kernel'] + d['bias'] - y) ** 2)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    return optim.apply_gradients(tx, g, s, p, ('reverse',))

  state = tx.init(params)
  first = float(loss(params))
  for _ in range(40):
    params, state = step(params, state)
  assert float(loss(params)) < 0.05 * first


def test_muon_config_is_checked():
  c = muon_config()
  config_lib.validate(c)
  c.optim.reverse.algorithm = 'lion'
  with pytest.raises(ValueError, match=r"optim.reverse.algorithm='lion' is not one of"):
    config_lib.validate(c)
  c = muon_config(muon_beta=1.0)
  with pytest.raises(ValueError, match=r'optim.reverse.muon_beta=1.0 must be in \[0, 1\)'):
    config_lib.validate(c)
