"""Levers of G's training: its teacher (objective.reverse_teacher), prior rows
(objective.prior_fraction), learned denoising's target (objective.denoise_target) and its
own batch size (schedule.reverse_batch_size)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax import config_lib
from biflow_jax.objective import biflow
from biflow_jax.training.experiment import build_experiment
from test_reverse_training import biflow_config


def perturbed(tree, scale=0.05, seed=1):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.fixture(scope='module')
def setup():
  config = biflow_config()
  exp = build_experiment(config)
  state = exp.create_state()
  # A flow that is not the identity, so F^-1 and F's score are non-trivial.
  params = dict(state.params, forward=perturbed(state.params['forward']))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)),
           'label': jnp.asarray(np.arange(8) % 10, jnp.int32)}
  return config, exp, params, batch


def reverse_phase(exp):
  return next(p for p in exp.plan if p.trainable == ('reverse',))


def loss(exp, config, params, batch, phase, teacher=None):
  return biflow.loss_fn(params, batch, jax.random.PRNGKey(3), phase=phase, models=exp.models,
                        config=config, frozen_params=exp.frozen_params, teacher_forward=teacher)


def test_prior_pairs_invert_f_and_take_tweedie_targets(setup):
  config, exp, params, _ = setup
  flow = exp.models.flow
  z = jax.random.normal(jax.random.PRNGKey(0), (4, flow.num_tokens, flow.token_dim))
  y = jnp.arange(4, dtype=jnp.int32)
  x_noisy, x_clean = biflow.prior_pairs(flow, params['forward'], z, y, config)
  z_back, _, _ = flow.apply({'params': params['forward']}, x_noisy, y)
  # float32 round trip of prior noise through a random (perturbed) F: the largest error
  # measured is 1.9e-4 (jax 0.10.2, 2026-12-06); a wrong inverse is off by O(1).
  np.testing.assert_allclose(np.asarray(z_back), np.asarray(z), atol=1e-3)
  assert float(jnp.abs(x_clean - x_noisy).max()) > 1e-4  # Tweedie moved it
  config.objective.prior_denoise = 'none'
  _, same = biflow.prior_pairs(flow, params['forward'], z, y, config)
  config.objective.prior_denoise = 'score'
  np.testing.assert_array_equal(np.asarray(same), np.asarray(x_noisy))


def test_score_denoise_targets_are_f_tweedie_on_data_rows_only(setup):
  config, exp, params, batch = setup
  flow = exp.models.flow
  x_clean, x_noisy, y = biflow.prepare_inputs(batch, jax.random.PRNGKey(0), config,
                                              flow.num_classes, train=True)
  assert biflow.data_denoise_targets(flow, params['forward'], x_clean, x_noisy, y, 3,
                                     config) is x_clean  # the default: the clean x
  tweedie = biflow.score_denoise(
      flow, {'params': params['forward']}, x_noisy, y, config.objective.noise_sigma)
  config.objective.denoise_target = 'score'
  try:
    targets = biflow.data_denoise_targets(flow, params['forward'], x_clean, x_noisy, y, 3,
                                          config)
    np.testing.assert_allclose(np.asarray(targets[:5]), np.asarray(tweedie[:5]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(targets[5:]), np.asarray(x_clean[5:]))  # prior rows
    assert float(jnp.abs(tweedie - x_clean).max()) > 1e-2  # not the clean x in disguise

    # Through the loss: G's end point is measured against the Tweedie targets.
    phase = reverse_phase(exp)
    _, metrics = loss(exp, config, params, batch, phase)
    data_rng, reverse_rng = jax.random.split(jax.random.PRNGKey(3))
    x_clean, x_noisy, y = biflow.prepare_inputs(batch, data_rng, config, flow.num_classes,
                                                train=True)
    _, _, trajectory = flow.apply({'params': params['forward']}, x_noisy, y)
    tweedie = biflow.score_denoise(flow, {'params': params['forward']}, x_noisy, y,
                                   config.objective.noise_sigma)
    _, expected = biflow.reverse_objective(exp.models, params, tweedie, x_noisy, y, trajectory,
                                           reverse_rng, config, exp.frozen_params)
    _, clean_metrics = biflow.reverse_objective(exp.models, params, x_clean, x_noisy, y,
                                                trajectory, reverse_rng, config,
                                                exp.frozen_params)
  finally:
    config.objective.denoise_target = 'clean'
  np.testing.assert_allclose(float(metrics['reverse/out']), float(expected['reverse/out']),
                             rtol=1e-5)
  assert abs(float(expected['reverse/out']) - float(clean_metrics['reverse/out'])) > 1e-4


@pytest.mark.slow  # two G steps compiled (~35 s)
def test_prior_rows_replace_the_last_rows_and_keep_data_metrics(setup):
  config, exp, params, batch = setup
  phase = reverse_phase(exp)
  _, base = loss(exp, config, params, batch, phase)
  config.objective.prior_fraction = 0.25  # 2 of 8 rows
  try:
    assert biflow.prior_rows(8, config) == 2
    value, with_prior = loss(exp, config, params, batch, phase)
    # NLL metrics are of the 6 data rows, whose noise is unchanged by the prior rows.
    config.objective.prior_fraction = 0.0
    six = {k: v[:6] for k, v in batch.items()}
    _, first_six = loss(exp, config, params, six, phase)
  finally:
    config.objective.prior_fraction = 0.0
  assert np.isfinite(float(value))
  np.testing.assert_allclose(float(with_prior['nll_per_dim']), float(first_six['nll_per_dim']),
                             rtol=1e-5)
  assert float(with_prior['reverse/loss']) != pytest.approx(float(base['reverse/loss']))


def test_the_ema_teacher_is_the_f_g_learns_from(setup):
  config, exp, params, batch = setup
  phase = reverse_phase(exp)
  _, own = loss(exp, config, params, batch, phase)
  _, same = loss(exp, config, params, batch, phase, teacher=params['forward'])
  _, other = loss(exp, config, params, batch, phase, teacher=perturbed(params['forward'], seed=2))
  assert float(same['reverse/loss']) == float(own['reverse/loss'])
  assert float(other['reverse/loss']) != pytest.approx(float(own['reverse/loss']))


@pytest.mark.slow  # a joint F+G step compiled (~40 s)
def test_in_a_joint_phase_f_learns_from_every_data_row_and_no_prior_row(setup):
  config, exp, params, batch = setup
  config.schedule.plan, config.schedule.joint_steps = 'progressive', 4
  config.objective.prior_fraction = 0.25
  try:
    joint_exp = build_experiment(config)
    phase = next(p for p in joint_exp.plan if p.name == 'joint')
    grad_nll = lambda b, cfg: jax.grad(lambda p: biflow.loss_fn(
        p, b, jax.random.PRNGKey(3), phase=phase, models=joint_exp.models, config=cfg)[1][
            'nll_per_dim'])(params)['forward']
    with_prior = grad_nll(batch, config)
    config.objective.prior_fraction = 0.0
    data_only = grad_nll(batch, config)  # F's NLL sees the real batch, whole, either way
  finally:
    config.schedule.plan, config.schedule.joint_steps = 'two_stage', 0
    config.objective.prior_fraction = 0.0
  for a, b in zip(jax.tree.leaves(with_prior), jax.tree.leaves(data_only)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_values_are_clear_errors():
  config = biflow_config()
  config.objective.prior_fraction = 1.0
  with pytest.raises(ValueError, match=r'prior_fraction=1.0 must be in \[0, 1\)'):
    config_lib.validate(config)
  config.objective.prior_fraction = 0.25
  config.objective.reverse_target = 'inverse_matching'
  with pytest.raises(ValueError, match='every row is already prior noise'):
    config_lib.validate(config)
  config = biflow_config()
  config.objective.reverse_teacher = 'raw'
  with pytest.raises(ValueError, match='reverse_teacher'):
    config_lib.validate(config)
  config = biflow_config()
  config.objective.denoise_target = 'tweedie'
  with pytest.raises(ValueError, match='denoise_target'):
    config_lib.validate(config)
  config.objective.denoise_target = 'score'
  config.objective.denoise = 'none'
  with pytest.raises(ValueError, match="would change nothing: set denoise='learned'"):
    config_lib.validate(config)


@pytest.mark.slow  # two G steps compiled (~30 s)
def test_a_g_step_with_a_smaller_batch_trains_on_the_first_rows(setup):
  config, exp, params, batch = setup
  full = config.batch_size
  config.schedule.reverse_batch_size = 4
  try:
    half = build_experiment(config)
    copy = lambda: jax.tree.map(jnp.copy, params)  # the step donates its state
    state = half.create_state().replace(params=copy(), ema=copy())
    phase = reverse_phase(half)
    after, _ = half.step(state, batch, half.frozen_params, phase)
    config.schedule.reverse_batch_size, config.batch_size = 0, 4
    four = build_experiment(config)
    state = four.create_state().replace(params=copy(), ema=copy())
    want, _ = four.step(state, {k: v[:4] for k, v in batch.items()}, four.frozen_params,
                        reverse_phase(four))
  finally:
    config.schedule.reverse_batch_size, config.batch_size = 0, full
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(want.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.schedule.reverse_batch_size = full + 1
  try:
    with pytest.raises(ValueError, match=rf'reverse_batch_size={full + 1} must be in \[0, '
                       rf'batch_size={full}\]'):
      config_lib.validate(config)
  finally:
    config.schedule.reverse_batch_size = 0


def test_inverse_matching_honours_token_weighting_and_the_teacher(setup):
  """objective.token_weighting reaches inverse matching (it was silently ignored before),
  and the target is the teacher's inverse."""
  config, exp, params, batch = setup
  phase = reverse_phase(exp)
  config.objective.reverse_target = 'inverse_matching'
  try:
    _, plain = loss(exp, config, params, batch, phase)
    config.objective.token_weighting = True
    _, weighted = loss(exp, config, params, batch, phase)
    config.objective.token_weighting = False
    _, other = loss(exp, config, params, batch, phase, teacher=perturbed(params['forward'], seed=2))
  finally:
    config.objective.reverse_target, config.objective.token_weighting = 'trajectory', False
  # Same z, same target: the unweighted MSE agrees, the weighted loss is larger
  # (mean(w e) = mean(e^2) / mean(e) per sample, above mean(e) when errors are uneven).
  assert float(weighted['inverse/mse']) == pytest.approx(float(plain['inverse/mse']), rel=1e-6)
  assert float(plain['reverse/loss']) == pytest.approx(float(plain['inverse/mse']), rel=1e-6)
  assert float(weighted['reverse/loss']) > 1.001 * float(weighted['inverse/mse'])
  assert float(other['inverse/mse']) != pytest.approx(float(plain['inverse/mse']))
