"""The founding description's joint objective L = L_NLL(F) + lambda * L_reverse(G) with
stop-gradient targets (docs/method.md §5.5; issue 29): what lambda can and cannot change.

F's gradient is the NLL's alone (the reverse term's targets are stop-gradient), and each
group has its own Adam (§5.3), whose update m / (sqrt(v) + eps) does not change when a
gradient is scaled. So lambda reaches training only through G's global-norm clip (a
clip at norm c on lambda * g is a clip at c / lambda on g) and Adam's eps. These tests
pin that down, so the lambda rows of the objective study are read as what they are.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.training.experiment import build_experiment
from test_reverse_training import biflow_config

JOINT_STEPS = 3


def joint_config(reverse_weight: float, grad_clip: float, eps: float | None = None):
  config = biflow_config()
  config.schedule.plan = 'progressive'
  config.schedule.forward_steps = 0
  config.schedule.joint_steps = JOINT_STEPS
  config.schedule.reverse_steps = 0
  config.objective.reverse_weight = reverse_weight
  config.optim.forward.grad_clip = grad_clip
  config.optim.reverse.grad_clip = grad_clip
  if eps is not None:
    config.optim.forward.eps = config.optim.reverse.eps = eps
  return config


def params_after_joint_steps(reverse_weight: float, grad_clip: float, eps: float | None = None):
  """(G's initial params, params after JOINT_STEPS joint steps, the last step's metrics)."""
  config = joint_config(reverse_weight, grad_clip, eps)
  exp = build_experiment(config)
  state = exp.create_state()
  start = jax.tree.map(np.asarray, state.params['reverse'])
  (phase,) = exp.plan
  assert phase.name == 'joint'
  rng = np.random.default_rng(0)
  for _ in range(JOINT_STEPS):
    batch = {'image': jnp.asarray(rng.integers(0, 256, (config.batch_size, 28, 28, 1),
                                               dtype=np.uint8)),
             'label': jnp.asarray(rng.integers(0, 10, config.batch_size), jnp.int32)}
    state, metrics = exp.step(state, exp.global_batch(batch), exp.frozen_params, phase)
  return start, jax.tree.map(np.asarray, state.params), jax.tree.map(float, metrics)


def update_difference(a, b, start) -> float:
  """||(a - start) - (b - start)|| / ||b - start|| over all leaves: how far two runs'
  updates from the same start differ."""
  diff = sum(float(np.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  norm = sum(float(np.sum((y - s) ** 2)) for y, s in zip(jax.tree.leaves(b), jax.tree.leaves(start)))
  return (diff / norm) ** 0.5



@pytest.mark.slow  # three joint steps compiled and run three times (~70 s)
def test_lambda_changes_neither_f_nor_g_without_clipping():
  # Adam's eps is set near 0 here: with the default 1e-8, leaves whose gradients are that
  # small (zero-initialised paths, early steps) move differently under lambda.
  start, base, metrics = params_after_joint_steps(1.0, grad_clip=0.0, eps=1e-30)
  assert metrics['grad_norm/reverse'] > 0 and metrics['grad_norm/forward'] > 0
  for weight in (0.5, 2.0):
    _, params, _ = params_after_joint_steps(weight, grad_clip=0.0, eps=1e-30)
    # F learns from the NLL alone: lambda does not reach it.
    for a, b in zip(jax.tree.leaves(params['forward']), jax.tree.leaves(base['forward'])):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # G: Adam undoes the scale (to float rounding, once eps is out of the way).
    assert update_difference(params['reverse'], base['reverse'], start) < 1e-4


@pytest.mark.slow  # as above
def test_with_the_clip_lambda_changes_g_only():
  # With lambda 1 the clip (norm 1) is active at these first steps; with lambda 1e-3 it
  # is not. A per-step clip scale is not a constant scale, so Adam does not undo it.
  # (Two lambdas whose gradients are both clipped give the same update: only the band
  # where one is clipped and the other not is affected.)
  start, base, metrics = params_after_joint_steps(1.0, grad_clip=1.0)
  assert metrics['grad_norm/reverse'] > 1.0
  _, params, metrics = params_after_joint_steps(1e-3, grad_clip=1.0)
  assert metrics['grad_norm/reverse'] < 1.0
  for a, b in zip(jax.tree.leaves(params['forward']), jax.tree.leaves(base['forward'])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert update_difference(params['reverse'], base['reverse'], start) > 1e-2
