"""The market model's pieces: F's Student-t base against scipy, the model space and its
Jacobian, the market data source of the training job and its config checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from biflow_jax import config_lib
from biflow_jax.data import input_pipeline, market, market_source, market_space
from biflow_jax.models import base_density
from biflow_jax.models.flow import ForwardFlow, base_nll
from biflow_jax.models.generator import ReverseModel
from market_util import tiny_market_config

Z = np.array([[0.0, 0.3, -1.7, 4.0, -12.0, 55.0]], np.float32)


@pytest.mark.parametrize('nu', [2.5, 5.0, 30.0])
def test_student_t_log_prob_matches_scipy(nu):
  got = float(base_density.log_prob(jnp.asarray(Z), 'student_t', nu)[0])
  scale = math.sqrt((nu - 2) / nu)  # the base has unit variance
  want = float(np.sum(stats.t.logpdf(Z.astype(np.float64), df=nu, scale=scale)))
  assert got == pytest.approx(want, rel=1e-5)


def test_gaussian_log_prob_matches_scipy_and_the_flows_own():
  got = float(base_density.log_prob(jnp.asarray(Z), 'gaussian')[0])
  assert got == pytest.approx(float(np.sum(stats.norm.logpdf(Z.astype(np.float64)))), rel=1e-6)
  logdet = jnp.asarray([0.7])
  flow = ForwardFlow(image_shape=(6, 1, 1), patch_size=1, channels=8, num_blocks=1,
                     layers_per_block=1, num_heads=1)
  assert float(base_nll(flow, jnp.asarray(Z), logdet)[0]) == pytest.approx(-got - 0.7, rel=1e-6)


def test_student_t_nll_of_the_flow_counts_its_log_det():
  # An untrained F is the identity (zero-initialised heads): NLL = -sum log t_nu(x).
  flow = ForwardFlow(image_shape=(4, 1, 3), patch_size=1, channels=16, num_blocks=2,
                     layers_per_block=1, num_heads=2, base='student_t', nu=4.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 1, 3)) * 3
  params = flow.init(jax.random.PRNGKey(1), x)
  z, logdet, _ = flow.apply(params, x)
  np.testing.assert_allclose(np.asarray(logdet), 0.0, atol=1e-6)
  want = -np.sum(stats.t.logpdf(np.asarray(x, np.float64).reshape(2, -1), df=4.0,
                                scale=math.sqrt(0.5)), axis=1)
  np.testing.assert_allclose(np.asarray(base_nll(flow, z, logdet)), want, rtol=1e-5)


def test_student_t_samples_have_unit_variance_and_a_base_is_checked():
  z = base_density.sample(jax.random.PRNGKey(0), (200_000,), 'student_t', 6.0)
  assert float(jnp.var(z)) == pytest.approx(1.0, rel=0.03)  # unit variance
  assert float(jnp.max(jnp.abs(z))) > 8  # N(0, 1) passes 8 with probability 1e-15 per draw
  with pytest.raises(ValueError, match='nu > 2'):
    base_density.log_prob(jnp.zeros((1, 3)), 'student_t', 2.0)
  with pytest.raises(ValueError, match='unknown base density'):
    base_density.sample(jax.random.PRNGKey(0), (3,), 'laplace', 1.0)


def test_host_draws_have_the_base_distribution_and_follow_the_key():
  key = jax.random.PRNGKey(3)
  z = base_density.host_sample(key, (200_000,), 'student_t', 6.0, temperature=2.0)
  assert z.dtype == np.float32 and z.shape == (200_000,)
  assert float(np.var(z)) == pytest.approx(4.0, rel=0.03)  # unit variance, times T^2
  # Same law as jax's draws: their quantiles agree (KS two-sample test).
  ref = np.asarray(base_density.sample(key, (200_000,), 'student_t', 6.0, 2.0))
  assert stats.ks_2samp(z, ref).pvalue > 1e-3
  np.testing.assert_array_equal(z, base_density.host_sample(key, (200_000,), 'student_t', 6.0,
                                                            temperature=2.0))
  assert not np.array_equal(z, base_density.host_sample(jax.random.PRNGKey(4), (200_000,),
                                                        'student_t', 6.0, temperature=2.0))
  g = base_density.host_sample(key, (100_000,), 'gaussian')
  assert float(np.std(g)) == pytest.approx(1.0, rel=0.02)


def test_temperature_costs_t_squared_minus_one_d_over_two():
  z = jax.random.normal(jax.random.PRNGKey(2), (4000, 20, 20))
  drop = base_density.log_density_drop(z, 1.2, 'gaussian')
  np.testing.assert_allclose(np.asarray(drop), (1.2 ** 2 - 1) * np.sum(np.asarray(z) ** 2, axis=(1, 2)) / 2,
                             rtol=1e-4)
  assert float(jnp.mean(drop)) == pytest.approx(88.0, rel=0.02)


def _space(whiten=True):
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(5, 5)) * 0.3 + np.eye(5)
  days = rng.standard_t(5, size=(400, 5)) @ mix * 0.02
  std = market.Standardizer.fit(days)
  return market_space.ModelSpace.fit(days, std, whiten), days


def test_model_space_whitens_training_days_and_inverts():
  space, days = _space()
  u = space.forward(days)
  np.testing.assert_allclose(u.T @ u / len(u), np.eye(5), atol=1e-10)
  np.testing.assert_allclose(space.inverse(u), days, atol=1e-12)
  assert np.all(space.basis.sum(axis=0) > 0)  # signs fixed: deterministic fits
  plain, _ = _space(whiten=False)
  np.testing.assert_allclose(plain.forward(days), plain.standardizer.forward(days))
  assert plain.whitening_log_det_per_day() == 0.0


def test_model_space_jacobian_by_finite_differences():
  space, days = _space()
  window = days[:3]  # (days=3, A=5)
  flat = lambda v: space.forward(v.reshape(3, 5)).ravel()
  eps = 1e-7
  jac = np.stack([(flat(window.ravel() + eps * e) - flat(window.ravel() - eps * e)) / (2 * eps)
                  for e in np.eye(15)], axis=1)
  assert np.linalg.slogdet(jac)[1] == pytest.approx(space.log_det_per_window(3), rel=1e-6)


def test_raw_nll_is_the_density_of_the_raw_returns():
  # N(0, I) in model space is N(mean, C) on raw days with C = S V diag(lambda) V^T S; the
  # Jacobian accounting must give that density exactly.
  space, days = _space()
  window = days[10:14]
  u = space.forward(window)
  nll_model = -np.sum(stats.norm.logpdf(u))
  s = np.diag(space.standardizer.scale)
  cov = s @ space.basis @ np.diag(space.eigenvalues) @ space.basis.T @ s
  want = -np.sum(stats.multivariate_normal(space.standardizer.mean, cov).logpdf(window))
  assert space.raw_nll(nll_model, 4) == pytest.approx(want, rel=1e-9)
  standardised_cov = space.basis @ np.diag(space.eigenvalues) @ space.basis.T
  std_nll = -np.sum(stats.multivariate_normal(np.zeros(5), standardised_cov).logpdf(
      space.standardizer.forward(window)))
  assert space.standardised_nll(nll_model, 4) == pytest.approx(std_nll, rel=1e-9)


def test_market_source_gives_model_space_windows_and_bins():
  config = tiny_market_config()
  source = input_pipeline.load_source(config, 'train')
  batch = source.gather(np.arange(8))
  assert batch['values'].shape == (8, 20, 1, 20) and batch['values'].dtype == np.float32
  data = market_source.load(config)
  np.testing.assert_allclose(batch['values'][:, :, 0], data.space.forward(data.dataset.train.x[:8]),
                             rtol=1e-5, atol=1e-5)
  labels = source.gather(np.arange(source.length))['label']
  assert labels.min() == 0 and labels.max() == config.market.vol_bins - 1
  held = input_pipeline.load_source(config, 'heldout')
  assert held.length == len(data.dataset.heldout_stride1)
  flow = ForwardFlow.from_config(config.model)
  assert (flow.num_tokens, flow.token_dim) == (20, 20)


def test_validation_years_leave_training_and_replace_the_heldout_part():
  config = tiny_market_config()
  config.market.start, config.market.end = '2006-01-01', '2008-12-31'
  config.market.validation_years = '2006'
  data = market_source.load(config)
  assert set(data.dataset.train.year.tolist()) == {2007}
  assert set(data.validation.year.tolist()) == {2006}
  values, _ = market_source.arrays(config, 'heldout')
  assert len(values) == len(data.validation)  # never the held-out year 2008
  config.market.validation_years = '2007,2006'
  with pytest.raises(market_source.MarketConfigError, match='some but not all'):
    market_source.load(config)


@pytest.mark.parametrize('field,value,match', [
    ('model.image_size', 28, 'model.image_size=28'),
    ('model.image_width', 0, 'one token per day'),
    ('model.patch_size', 2, 'model.patch_size=2'),
    ('model.num_classes', 7, 'vol_bins'),
    ('model.in_channels', 3, 'prices have 20 assets'),
    ('market.split', 'random', 'not one of'),
])
def test_a_config_that_does_not_fit_the_data_is_one_clear_error(field, value, match):
  config = tiny_market_config()
  group, name = field.split('.')
  config[group][name] = value
  with pytest.raises(market_source.MarketConfigError, match=match):
    market_source.load(config)


def test_config_validation_of_the_new_model_fields():
  config = tiny_market_config()
  config_lib.validate(config)
  config.model.base = 'laplace'
  with pytest.raises(ValueError, match='model.base'):
    config_lib.validate(config)
  config.model.base, config.model.nu = 'student_t', 1.5
  with pytest.raises(ValueError, match='nu > 2'):
    config_lib.validate(config)
  config.model.nu = 5.0
  config.model.image_width = 3
  config.model.patch_size = 2
  with pytest.raises(ValueError, match='image_width=3'):
    config_lib.validate(config)
  assert math.isfinite(config.model.nu)


@pytest.mark.parametrize('skip', ['none', 'add', 'affine'])
def test_generator_skip_lets_the_scale_of_z_through(skip):
  # G's heads end in an RMS norm: with 'none' the output does not grow with |z|; with 'add'
  # and 'affine' it does, and a zero head leaves z itself (affine: s = b = 0).
  config = tiny_market_config()
  config.reverse.skip = skip
  gen = ReverseModel.from_config(config.reverse, config.model)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20))
  y = jnp.array([0, 1])
  params = gen.init(jax.random.PRNGKey(1), z, y)['params']
  zero = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if 'out_proj' in jax.tree_util.keystr(path) else p, params)
  out, projections = gen.apply({'params': zero}, z, y)
  assert len(projections) == config.model.num_blocks
  if skip == 'none':
    np.testing.assert_allclose(np.asarray(out), 0.0)
  else:
    np.testing.assert_allclose(np.asarray(out), np.asarray(z), rtol=1e-6)
  big, _ = gen.apply({'params': params}, 100 * z, y)
  small, _ = gen.apply({'params': params}, z, y)
  ratio = float(jnp.linalg.norm(big) / jnp.linalg.norm(small))
  assert (ratio < 5) if skip == 'none' else (ratio > 30)
