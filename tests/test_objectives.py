"""Tests for the reverse-side losses in biflow_jax.objectives (METHOD.md section 3)."""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.objective import biflow, primitives
from biflow_jax.runtime import images

BATCH, T, D, B = 3, 4, 5, 3


def make_data(seed: int = 0):
  """Random clean x, trajectory [x^0..x^B] with varied scales, output and projections."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * B + 4)
  shape = (BATCH, T, D)
  clean = jax.random.normal(keys[0], shape)
  trajectory = [(1.0 + 2.0 * i) * jax.random.normal(keys[1 + i], shape) for i in range(B + 1)]
  output = jax.random.normal(keys[B + 2], shape)
  projections = [jax.random.normal(keys[B + 3 + j], shape) for j in range(B)]
  return output, projections, clean, trajectory


def perfect(clean, trajectory, denoise):
  """G's outputs equal to their targets."""
  projections = [trajectory[B - 1 - j] for j in range(B)]
  output = clean if denoise == 'learned' else trajectory[0]
  return output, projections


@pytest.mark.parametrize('mode,denoise,norm_control,p,token_weighting', list(itertools.product(
    ['naive', 'align', 'hidden'], ['learned', 'none'], [True, False], [0.0, 0.5], [False, True])))
def test_zero_at_targets(mode, denoise, norm_control, p, token_weighting):
  _, _, clean, trajectory = make_data()
  output, projections = perfect(clean, trajectory, denoise)
  loss, metrics = biflow.reverse_loss(
      output, projections, clean, trajectory, mode=mode, norm_control=norm_control,
      adaptive_p=p, denoise=denoise, token_weighting=token_weighting)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert float(loss) == 0.0
  assert all(float(v) == 0.0 for v in metrics.values())


def test_metrics_keys_and_total():
  output, projections, clean, trajectory = make_data()
  loss, m = biflow.reverse_loss(output, projections, clean, trajectory, mode='align')
  assert set(m) == {f'reverse/align_{j}' for j in range(B)} | {'reverse/out', 'reverse/loss'}
  np.testing.assert_allclose(float(loss), sum(float(m[k]) for k in m if k != 'reverse/loss'),
                             rtol=1e-6)
  _, m = biflow.reverse_loss(output, projections, clean, trajectory, mode='naive')
  assert set(m) == {'reverse/out', 'reverse/loss'}
  # denoise='none': the x^0 projection duplicates the end point and is dropped.
  _, m = biflow.reverse_loss(output, projections, clean, trajectory, denoise='none')
  assert set(m) == {f'reverse/align_{j}' for j in range(B - 1)} | {'reverse/out', 'reverse/loss'}
  _, m2 = biflow.reverse_loss(output, projections[:-1], None, trajectory, denoise='score')
  assert all(float(m[k]) == float(m2[k]) for k in m)
  with pytest.raises(ValueError):
    biflow.reverse_loss(output, projections[:-1], clean, trajectory, mode='align')
  with pytest.raises(ValueError):
    biflow.reverse_loss(output, projections, clean, trajectory, mode='bogus')


def test_end_point_target_depends_on_denoise():
  _, projections, clean, trajectory = make_data()
  _, m = biflow.reverse_loss(clean, projections, clean, trajectory, mode='naive')
  assert float(m['reverse/out']) == 0.0
  _, m = biflow.reverse_loss(clean, projections, clean, trajectory, mode='naive',
                                 denoise='none')
  assert float(m['reverse/out']) > 0.0


def test_naive_ignores_projections_align_uses_all():
  output, projections, clean, trajectory = make_data()
  naive = lambda ps: biflow.reverse_loss(output, ps, clean, trajectory, mode='naive')[0]
  align = lambda ps: biflow.reverse_loss(output, ps, clean, trajectory, mode='align')[0]
  base_naive, base_align = float(naive(projections)), float(align(projections))
  assert float(naive(None)) == base_naive
  for j in range(B):
    perturbed = list(projections)
    perturbed[j] = perturbed[j] + 0.5
    assert float(naive(perturbed)) == base_naive
    assert float(align(perturbed)) != base_align
  hidden = biflow.reverse_loss(output, projections, clean, trajectory, mode='hidden')[0]
  assert float(hidden) == base_align


def test_adaptive_weight_value_and_gradient():
  d = jnp.array([0.01, 0.5, 2.0, 30.0], jnp.float32)
  for p in (0.0, 0.5, 1.0):
    np.testing.assert_allclose(primitives.adaptive_weight(d, p, eps=1e-7), d ** (1 - p),
                               rtol=1e-4)
    grad = jax.grad(lambda x: jnp.sum(primitives.adaptive_weight(x, p, eps=1e-3)))(d)
    np.testing.assert_allclose(grad, (d + 1e-3) ** (-p), rtol=1e-5)
  # p = 0 is plain MSE, exactly.
  np.testing.assert_array_equal(primitives.adaptive_weight(d, 0.0), d)


def test_adaptive_weight_is_per_sample_in_loss():
  output, projections, clean, trajectory = make_data()
  p, eps = 0.5, 1e-3
  loss, _ = biflow.reverse_loss(output, projections, clean, trajectory, mode='naive',
                                    adaptive_p=p, eps=eps, norm_control=False)
  d = np.asarray(primitives.mse(output, clean))
  np.testing.assert_allclose(float(loss), np.mean(d * (d + eps) ** -p), rtol=1e-5)


@pytest.mark.parametrize('j', range(B))
def test_norm_control_scale(j):
  output, projections, clean, trajectory = make_data()
  key = f'reverse/align_{j}'

  def term(scale, norm_control):
    traj, projs = list(trajectory), list(projections)
    traj[B - 1 - j] = traj[B - 1 - j] * scale
    projs[j] = projs[j] * scale
    _, m = biflow.reverse_loss(output, projs, clean, traj, norm_control=norm_control)
    return float(m[key])

  np.testing.assert_allclose(term(10.0, True), term(1.0, True), rtol=1e-4)
  np.testing.assert_allclose(term(10.0, False), 100.0 * term(1.0, False), rtol=1e-5)


def test_normalize_state_uses_reference_norm():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, T, D))
  ref = jnp.stack([jnp.full((T, D), 2.0), jnp.full((T, D), -4.0)])
  out = primitives.normalize_state(x, ref, eps=0.0)
  np.testing.assert_allclose(out, x / jnp.array([2.0, 4.0])[:, None, None], rtol=1e-6)
  g = jax.grad(lambda r: jnp.sum(primitives.normalize_state(x, r)))(ref)
  assert float(jnp.max(jnp.abs(g))) == 0.0


@pytest.mark.parametrize('norm_control,token_weighting,p',
                         [(True, False, 0.0), (False, True, 0.5), (True, True, 0.5)])
def test_no_gradient_to_targets(norm_control, token_weighting, p):
  output, projections, clean, trajectory = make_data()
  kw = dict(norm_control=norm_control, token_weighting=token_weighting, adaptive_p=p)

  def loss_fn(traj, cl):
    return biflow.reverse_loss(output, projections, cl, traj, **kw)[0]

  g_traj, g_clean = jax.grad(loss_fn, argnums=(0, 1))(trajectory, clean)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in g_traj)
  assert float(jnp.max(jnp.abs(g_clean))) == 0.0
  g_traj = jax.grad(lambda t: biflow.reverse_loss(output, projections, clean, t,
                                                      denoise='none', **kw)[0])(trajectory)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in g_traj)
  # ... while G's outputs do get gradients.
  g_out, g_proj = jax.grad(
      lambda o, ps: biflow.reverse_loss(o, ps, clean, trajectory, **kw)[0],
      argnums=(0, 1))(output, projections)
  assert float(jnp.max(jnp.abs(g_out))) > 0.0
  assert all(float(jnp.max(jnp.abs(g))) > 0.0 for g in g_proj)


def test_jit_and_bf16_inputs():
  output, projections, clean, trajectory = make_data()
  fn = jax.jit(functools.partial(biflow.reverse_loss, mode='align', adaptive_p=0.5,
                                 token_weighting=True))
  loss, m = fn(output.astype(jnp.bfloat16), [p.astype(jnp.bfloat16) for p in projections],
               clean, trajectory)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  assert all(v.dtype == jnp.float32 for v in m.values())


def test_perceptual_terms():
  output, projections, clean, trajectory = make_data()
  base, m0 = biflow.reverse_loss(output, projections, clean, trajectory)
  base_empty, _ = biflow.reverse_loss(output, projections, clean, trajectory,
                                          perceptual_terms=())
  assert float(base) == float(base_empty)
  l1 = lambda a, b: jnp.mean(jnp.abs(a - b).reshape(a.shape[0], -1), axis=1)
  loss, m = biflow.reverse_loss(output, projections, clean, trajectory,
                                    perceptual_terms=[('l1', l1, 0.5)], adaptive_p=0.0)
  np.testing.assert_allclose(float(m['reverse/l1']), float(jnp.mean(l1(output, clean))), rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(base) + 0.5 * float(m['reverse/l1']), rtol=1e-5)
  g = jax.grad(lambda c: biflow.reverse_loss(output, projections, c, trajectory,
                                                 perceptual_terms=[('l1', l1, 0.5)])[0])(clean)
  assert float(jnp.max(jnp.abs(g))) == 0.0


def test_token_weighting():
  target = jnp.zeros((2, T, D))
  pred = jax.random.normal(jax.random.PRNGKey(2), (2, T, D)) * 0.1
  pred = pred.at[:, 2].add(3.0)  # token 2 is much harder to reconstruct
  w = primitives.token_weights(pred, target)
  assert w.shape == (2, T)
  np.testing.assert_allclose(np.mean(np.asarray(w), axis=1), 1.0, rtol=1e-6)
  assert np.all(np.argmax(np.asarray(w), axis=1) == 2)
  assert np.all(np.asarray(w)[:, 2] > 1.0)
  # Weights are detached: the gradient is w_t * d(e_t).
  g = jax.grad(lambda p: jnp.sum(primitives.token_weighted_mse(p, target)))(pred)
  expected = np.asarray(w)[:, :, None] * 2.0 * np.asarray(pred) / (T * D)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-9)
  # Zero error everywhere: weights are 1.
  np.testing.assert_allclose(primitives.token_weights(target, target), 1.0)
  # Token weighting changes the loss, and upweights the hard token relative to MSE.
  assert float(jnp.mean(primitives.token_weighted_mse(pred, target))) > \
      float(jnp.mean(primitives.mse(pred, target)))


def test_cfg_combine():
  rng = np.random.default_rng(0)
  cond = rng.normal(size=(4, T, D)).astype(np.float32)
  uncond = rng.normal(size=(4, T, D)).astype(np.float32)
  w = rng.uniform(0, 3, size=(4,)).astype(np.float32)
  out = primitives.cfg_combine(jnp.asarray(cond), jnp.asarray(uncond), jnp.asarray(w))
  expected = (cond + w[:, None, None] * uncond) / (1 + w[:, None, None])
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  out0 = primitives.cfg_combine(jnp.asarray(cond), jnp.asarray(uncond), jnp.zeros((4,)))
  np.testing.assert_array_equal(np.asarray(out0), cond)


def test_sample_guidance_scale():
  rng = jax.random.PRNGKey(3)
  n, w_max, zero_prob = 20000, 4.0, 0.2
  w = primitives.sample_guidance_scale(rng, n, w_max, zero_prob)
  assert w.shape == (n,) and w.dtype == jnp.float32
  w = np.asarray(w)
  assert w.min() >= 0.0 and w.max() <= w_max
  assert abs(np.mean(w == 0.0) - zero_prob) < 0.02
  nz = w[w > 0]
  assert abs(nz.mean() - w_max / 2) < 0.1
  np.testing.assert_array_equal(w, primitives.sample_guidance_scale(rng, n, w_max, zero_prob))
  assert not np.array_equal(w, primitives.sample_guidance_scale(jax.random.PRNGKey(4), n,
                                                                w_max, zero_prob))
  assert np.all(np.asarray(primitives.sample_guidance_scale(rng, 64, w_max, 1.0)) == 0.0)
  assert np.all(np.asarray(primitives.sample_guidance_scale(rng, 64, w_max, 0.0)) > 0.0)


def test_inverse_matching_loss():
  pred = jax.random.normal(jax.random.PRNGKey(5), (2, T, D))
  target = jax.random.normal(jax.random.PRNGKey(6), (2, T, D))
  loss, m = primitives.inverse_matching_loss(pred, pred)
  assert float(loss) == 0.0 and loss.dtype == jnp.float32
  loss, m = primitives.inverse_matching_loss(pred, target)
  np.testing.assert_allclose(float(loss), float(jnp.mean((pred - target) ** 2)), rtol=1e-6)
  assert float(m['inverse/mse']) == float(loss)
  g_t = jax.grad(lambda t: primitives.inverse_matching_loss(pred, t)[0])(target)
  assert float(jnp.max(jnp.abs(g_t))) == 0.0
  g_p = jax.grad(lambda p: primitives.inverse_matching_loss(p, target)[0])(pred)
  np.testing.assert_allclose(g_p, 2 * (pred - target) / pred.size, rtol=1e-5)


def test_inverse_matching_token_weighting():
  """Importance weighting (§4.10) on inverse matching: the hand formula, the plain loss
  where every token errs equally, a larger loss where errors are uneven (the weights
  favour the worse tokens), and a gradient through the error only (weights detached)."""
  pred = jax.random.normal(jax.random.PRNGKey(5), (2, T, D))
  target = jax.random.normal(jax.random.PRNGKey(6), (2, T, D))
  loss, m = primitives.inverse_matching_loss(pred, target, token_weighting=True)
  e = np.mean(np.square(np.asarray(pred) - np.asarray(target)), axis=2)    # (batch, T)
  w = e / e.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(float(loss), float(np.mean(w * e)), rtol=1e-5)
  np.testing.assert_allclose(float(m['inverse/mse']), float(e.mean()), rtol=1e-6)
  assert float(loss) > float(m['inverse/mse'])          # mean(e^2)/mean(e) >= mean(e)
  uniform = target + 0.5 * jnp.sign(jax.random.normal(jax.random.PRNGKey(7), target.shape))
  plain, _ = primitives.inverse_matching_loss(uniform, target)
  weighted, _ = primitives.inverse_matching_loss(uniform, target, token_weighting=True)
  np.testing.assert_allclose(float(weighted), float(plain), rtol=1e-6)
  g = jax.grad(lambda p: primitives.inverse_matching_loss(p, target, True)[0])(pred)
  expected = 2 * w[..., None] * (np.asarray(pred) - np.asarray(target)) / pred.size
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-9)


def test_from_uint8_maps_every_level_and_round_trips_through_to_uint8():
  levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  x = primitives.from_uint8(levels)
  assert isinstance(x, np.ndarray) and x.dtype == np.float32   # host arrays stay numpy
  assert x.min() == -1.0 and x.max() == 1.0
  np.testing.assert_allclose(np.diff(x.ravel()), 2.0 / 255.0, rtol=1e-5)  # one bin width
  traced = jax.jit(primitives.from_uint8)(jnp.asarray(levels))
  # XLA may divide as a multiply by 1 / 127.5: equal up to one float32 ulp
  np.testing.assert_allclose(np.asarray(traced), x, rtol=0, atol=1.2e-7)
  np.testing.assert_array_equal(images.to_uint8(x), levels)
