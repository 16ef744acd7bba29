"""Stress estimators in z: importance sampling (q = p is plain Monte Carlo; a linear loss's
exact VaR), effective sample size, the plausible region and the reverse stress optimum."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from biflow_jax.data import market, market_space
from biflow_jax.evaluation import market_metrics as mm, market_stress, tail_risk
from biflow_jax.models import base_density

SHAPE = (4, 5)  # a small (days, assets) latent: d = 20
D = 20
A = np.linspace(-1.0, 2.0, D).reshape(SHAPE)  # a linear loss L(z) = A . z


def linear_loss(z):
  return jnp.sum(jnp.asarray(z) * jnp.asarray(A, jnp.float32), axis=(1, 2))


def test_importance_sampling_with_q_equal_to_p_is_plain_monte_carlo():
  z, log_w = market_stress.mean_shift(jax.random.PRNGKey(0), 5000, SHAPE, None, 'gaussian', 0.0)
  plain = base_density.host_sample(jax.random.PRNGKey(0), (5000, *SHAPE), 'gaussian')
  np.testing.assert_array_equal(np.asarray(z), np.asarray(plain))
  assert np.all(log_w == 0)
  losses = np.asarray(linear_loss(z), np.float64)
  np.testing.assert_allclose(tail_risk.var_es(losses, 0.99, log_w), tail_risk.var_es(losses, 0.99),
                             rtol=1e-12)
  assert tail_risk.effective_sample_size(log_w) == pytest.approx(5000)
  z0, log_w0 = market_stress.mean_shift(jax.random.PRNGKey(0), 10, SHAPE, np.zeros(SHAPE),
                                        'student_t', 5.0)
  assert np.all(log_w0 == 0)


@pytest.mark.parametrize('base,nu', [('gaussian', 0.0), ('student_t', 5.0)])
def test_importance_weights_are_the_density_ratio(base, nu):
  mu = np.full(SHAPE, 0.3)
  z, log_w = market_stress.mean_shift(jax.random.PRNGKey(1), 7, SHAPE, mu, base, nu)
  z = np.asarray(z, np.float64).reshape(7, -1)
  if base == 'gaussian':
    logp, logq = stats.norm.logpdf(z).sum(1), stats.norm.logpdf(z - mu.ravel()).sum(1)
  else:
    s = math.sqrt((nu - 2) / nu)
    logp = stats.t.logpdf(z, nu, scale=s).sum(1)
    logq = stats.t.logpdf(z - mu.ravel(), nu, scale=s).sum(1)
  np.testing.assert_allclose(log_w, logp - logq, rtol=1e-4, atol=1e-4)


def test_mean_shift_recovers_the_exact_tail_of_a_linear_loss():
  # L = A.z with z ~ N(0, I): L ~ N(0, |A|^2), VaR_a = |A| Phi^-1(a).
  norm_a = float(np.linalg.norm(A))
  direction = market_stress.shift_direction(jax.vmap(jax.grad(lambda z: linear_loss(z[None])[0])),
                                            jax.random.normal(jax.random.PRNGKey(2), (64, *SHAPE)))
  np.testing.assert_allclose(direction, A / norm_a, atol=1e-6)
  for level in (0.99, 0.999):
    size = market_stress.shift_size(direction, level, 'gaussian', 0.0, jax.random.PRNGKey(3))
    assert size == pytest.approx(stats.norm.ppf(level))
    z, log_w = market_stress.mean_shift(jax.random.PRNGKey(4), 4000, SHAPE, size * direction,
                                        'gaussian', 0.0)
    losses = np.asarray(linear_loss(z), np.float64)
    # Plain weights w / n (the densities are normalised): unbiased tail probabilities.
    var, es = tail_risk.var_es(losses, level, log_w, self_normalised=False)
    exact_var = norm_a * stats.norm.ppf(level)
    exact_es = norm_a * stats.norm.pdf(stats.norm.ppf(level)) / (1 - level)
    assert var == pytest.approx(exact_var, rel=0.02)
    assert es == pytest.approx(exact_es, rel=0.02)
    # Over all draws a shifted proposal keeps few effective draws (the weights of the rare
    # draws on the safe side are large); in the tail, where the estimate lives, the weights
    # are nearly equal.
    tail = losses > var
    assert tail_risk.effective_sample_size(log_w) < 0.1 * 4000
    assert tail_risk.effective_sample_size(log_w[tail]) > 0.3 * tail.sum() > 300


def test_shift_size_of_another_base_is_its_projected_quantile():
  u = np.zeros(SHAPE)
  u[0, 0] = 1.0  # the projection is one coordinate: a t_5 quantile
  size = market_stress.shift_size(u, 0.99, 'student_t', 5.0, jax.random.PRNGKey(5), n=400_000)
  assert size == pytest.approx(stats.t.ppf(0.99, 5, scale=math.sqrt(3 / 5)), rel=0.03)


def test_effective_sample_size_of_known_weights():
  w = np.array([1.0, 1.0, 2.0, 4.0])
  assert tail_risk.effective_sample_size(np.log(w)) == pytest.approx(w.sum() ** 2 / np.sum(w ** 2))


def test_gaussian_region_is_the_chi2_ball_and_projection_keeps_inside_points():
  region = market_stress.plausible_region(0.99, 400, 'gaussian', 0.0, jax.random.PRNGKey(0))
  assert region.radius2 == pytest.approx(stats.chi2.ppf(0.99, 400))
  assert math.sqrt(region.radius2) == pytest.approx(21.65, abs=0.01)  # the survey's number
  inside = jnp.ones((1, 20, 20)) * 0.5  # |z| = 10
  np.testing.assert_array_equal(np.asarray(market_stress.project(inside, region)), np.asarray(inside))
  far = jnp.ones((1, 20, 20)) * 3.0
  assert float(jnp.linalg.norm(market_stress.project(far, region))) == pytest.approx(
      math.sqrt(region.radius2), rel=1e-5)


@pytest.mark.parametrize('base,nu', [('gaussian', 0.0), ('student_t', 5.0)])
def test_reverse_optimum_respects_the_region(base, nu):
  region = market_stress.plausible_region(0.99, D, base, nu, jax.random.PRNGKey(0), n=100_000)
  starts = jax.random.normal(jax.random.PRNGKey(6), (3, *SHAPE))
  z, values = market_stress.worst_scenario(linear_loss, starts, region, steps=200, lr=0.05)
  assert np.all(region.contains(z))
  np.testing.assert_allclose(values, np.asarray(linear_loss(jnp.asarray(z, jnp.float32))),
                             rtol=1e-4)
  if base == 'gaussian':
    # The maximum of A.z over the ball is at radius * A / |A|, worth radius * |A|.
    best = math.sqrt(region.radius2) * np.linalg.norm(A)
    assert values.max() == pytest.approx(best, rel=1e-3)
    z_best = z[np.argmax(values)].ravel()
    assert np.linalg.norm(z_best) == pytest.approx(math.sqrt(region.radius2), rel=1e-5)
    assert z_best @ A.ravel() / (np.linalg.norm(z_best) * np.linalg.norm(A)) > 0.999
  else:
    # No point of the region beats the optimiser's by much: random feasible points score less.
    probe = market_stress.project(jax.random.normal(jax.random.PRNGKey(7), (2000, *SHAPE)) * 3,
                                  region)
    assert values.max() >= float(jnp.max(linear_loss(probe)))


def test_temperature_cost_of_the_founding_documents_example():
  assert market_stress.temperature_cost(1.2, 400) == pytest.approx(88.0)
  assert market_stress.temperature_cost(1.5, 400) == pytest.approx(250.0)


def test_portfolio_loss_in_model_space_matches_the_report_metric():
  rng = np.random.default_rng(0)
  days = rng.normal(size=(300, 5)) * 0.02
  space = market_space.ModelSpace.fit(days, market.Standardizer.fit(days))
  x = rng.normal(size=(6, 4, 5)) * 0.03
  w = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
  loss = market_stress.portfolio_loss_fn(space, w)(jnp.asarray(space.forward(x), jnp.float32))
  np.testing.assert_allclose(np.asarray(loss), mm.portfolio_losses(x, w), rtol=1e-4, atol=1e-6)
