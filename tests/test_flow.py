"""Properties of the forward flow F: exact log-dets, invertibility, causality, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.models import flow as flow_lib
from biflow_jax.models import layers
from biflow_jax.models.flow import FlowBlock, ForwardFlow, score_denoise
from biflow_jax.objective import primitives


def make_flow(clip=None, image_shape=(4, 4, 2), patch_size=2, num_classes=3, dtype=jnp.float32,
              clip_form='hard'):
  return ForwardFlow(image_shape=image_shape, patch_size=patch_size, channels=16, num_blocks=3,
                     layers_per_block=1, num_heads=2, num_classes=num_classes, clip=clip,
                     clip_form=clip_form, dtype=dtype)


def perturbed_variables(flow, x, y, scale=0.05, seed=0):
  """A fresh F is the identity (zero-init heads); randomise it so tests mean something."""
  variables = flow.init(jax.random.key(seed), x, y)
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope='module')
def setup():
  flow = make_flow()
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 2))
  y = jnp.array([0, 2])
  return flow, perturbed_variables(flow, x, y), x, y


@pytest.mark.parametrize('clip,clip_form', [(None, 'hard'), (0.05, 'hard'), (0.05, 'tanh')])
def test_logdet_matches_jacobian(clip, clip_form):
  flow = make_flow(clip=clip, clip_form=clip_form)
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
  y = jnp.array([1])
  variables = perturbed_variables(flow, x, y)

  def forward_flat(v):
    z, _, _ = flow.apply(variables, v.reshape(x.shape), y)
    return z.reshape(-1)

  jac = jax.jacfwd(forward_flat)(x.reshape(-1))
  _, expected = jnp.linalg.slogdet(jac)
  _, logdet, _ = flow.apply(variables, x, y)
  assert abs(float(logdet[0]) - float(expected)) < 1e-4 * max(1.0, abs(float(expected)))
  assert abs(float(expected)) > 0.1  # not the identity
  if clip is not None:  # the bound is really active somewhere, in its own form
    first_a = lambda f: f.apply(variables, layers.patchify(x, 2), y,
                                method=lambda m, t, yy: m.blocks[0].shift_params(t, yy))[0]
    a, raw = first_a(flow), first_a(make_flow(clip=None))
    assert float(jnp.max(jnp.abs(raw))) > 2 * clip
    np.testing.assert_allclose(a, flow_lib.bound(raw, clip, clip_form), atol=1e-7)
    assert float(jnp.max(jnp.abs(a))) == pytest.approx(clip)


def test_soft_clip_is_the_identity_near_zero_and_keeps_a_gradient():
  clip = 3.0
  u = jnp.array([-30.0, -4.0, -0.01, 0.0, 0.01, 4.0, 30.0])
  hard, soft = flow_lib.bound(u, clip, 'hard'), flow_lib.bound(u, clip, 'tanh')
  np.testing.assert_allclose(hard, jnp.clip(u, -clip, clip))
  assert float(jnp.max(jnp.abs(soft))) <= clip and np.all(np.sign(soft) == np.sign(u))
  np.testing.assert_allclose(soft[2:5], u[2:5], atol=1e-7)  # slope 1 at 0
  slope = lambda form: np.asarray(jax.vmap(jax.grad(lambda v: flow_lib.bound(v, clip, form)))(u))
  np.testing.assert_array_equal(slope('hard')[[1, 5]], 0.0)  # past the bound: no gradient
  assert np.all(slope('tanh')[1:6] > 0.2)  # past the bound: still learning
  np.testing.assert_allclose(slope('tanh')[1], 1 - np.tanh(4 / 3) ** 2, rtol=1e-5)
  with pytest.raises(ValueError, match="clip_form='soft' is not one of"):
    flow_lib.bound(u, clip, 'soft')


def test_soft_clipped_flow_inverts_exactly():
  flow = make_flow(clip=0.05, clip_form='tanh')
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 2))
  y = jnp.array([0, 2])
  variables = perturbed_variables(flow, x, y)
  z, _, _ = flow.apply(variables, x, y)
  back = flow.apply(variables, z, y, method=ForwardFlow.inverse)
  np.testing.assert_allclose(back, x, atol=1e-5)


def test_outputs_shapes_and_trajectory(setup):
  flow, variables, x, y = setup
  z, logdet, trajectory = flow.apply(variables, x, y)
  assert z.shape == (2, 4, 8) and logdet.shape == (2,) and logdet.dtype == jnp.float32
  assert len(trajectory) == flow.num_blocks + 1
  np.testing.assert_allclose(trajectory[0], layers.patchify(x, 2), atol=0)
  np.testing.assert_allclose(trajectory[-1], z, atol=0)


def test_exact_inverse_roundtrip(setup):
  flow, variables, x, y = setup
  z, _, _ = flow.apply(variables, x, y)
  inverse = jax.jit(lambda v, z, y: flow.apply(v, z, y, method=ForwardFlow.inverse))
  np.testing.assert_allclose(inverse(variables, z, y), x, atol=1e-4)


@pytest.mark.parametrize('num_groups', [1, 2, 3])
def test_fixed_point_with_T_iterations_is_exact(setup, num_groups):
  flow, variables, x, y = setup
  z, _, _ = flow.apply(variables, x, y)
  x_rec, iters, residual = flow.apply(variables, z, y, method=ForwardFlow.inverse,
                                      mode='fixed_point', tol=0.0, max_iters=flow.num_tokens,
                                      num_groups=num_groups)
  np.testing.assert_allclose(x_rec, x, atol=1e-4)
  assert iters.shape == (flow.num_blocks,)
  assert np.all(np.asarray(residual) <= 1e-4)


def test_fixed_point_tolerance_stops_early():
  flow = make_flow(image_shape=(8, 8, 1), patch_size=2)  # T = 16
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  y = jnp.array([0, 1])
  variables = perturbed_variables(flow, x, y, scale=0.02)
  z, _, _ = flow.apply(variables, x, y)
  x_rec, iters, residual = flow.apply(variables, z, y, method=ForwardFlow.inverse,
                                      mode='fixed_point', tol=1e-3)
  assert np.all(np.asarray(iters) < flow.num_tokens), iters
  assert np.all(np.asarray(residual) <= 1e-3)
  np.testing.assert_allclose(x_rec, x, atol=1e-2)


def test_guidance_matches_between_inverses_and_is_a_noop_without_labels(setup):
  flow, variables, x, y = setup
  z = jax.random.normal(jax.random.key(9), (2, 4, 8))
  exact = flow.apply(variables, z, y, method=ForwardFlow.inverse, guidance=1.5)
  fixed, _, _ = flow.apply(variables, z, y, method=ForwardFlow.inverse, mode='fixed_point',
                           guidance=1.5, tol=0.0)
  np.testing.assert_allclose(exact, fixed, atol=1e-4)
  assert float(jnp.max(jnp.abs(exact - flow.apply(variables, z, y, method=ForwardFlow.inverse)))) > 1e-3
  null = jnp.array([-1, -1])
  np.testing.assert_allclose(flow.apply(variables, z, null, method=ForwardFlow.inverse, guidance=2.0),
                             flow.apply(variables, z, null, method=ForwardFlow.inverse), atol=1e-5)


def test_dropped_label_is_mean_embedding(setup):
  flow, variables, x, _ = setup
  z_none, _, _ = flow.apply(variables, x, None)
  z_drop, _, _ = flow.apply(variables, x, jnp.array([-1, -1]))
  np.testing.assert_allclose(z_none, z_drop, atol=1e-6)


@pytest.mark.parametrize('reverse_order', [False, True])
def test_block_is_causal_in_its_own_order(reverse_order):
  block = FlowBlock(num_tokens=6, token_dim=3, channels=16, num_layers=2, num_heads=2,
                    num_classes=0, reverse_order=reverse_order)
  x = jax.random.normal(jax.random.key(1), (1, 6, 3))
  variables = perturbed_variables(block, x, None)
  out, _ = block.apply(variables, x)
  for t in range(6):
    x_perm = block.permute(x)
    changed = block.permute(x_perm.at[:, t].add(1.0))
    out2, _ = block.apply(variables, changed)
    diff = np.abs(np.asarray(block.permute(out2 - out)))[0].sum(-1)  # block order
    assert np.all(diff[:t] == 0), (t, diff)
    assert np.all(diff[t:] > 0), (t, diff)


@pytest.mark.parametrize('shape,p', [((8, 12, 3), 4), ((6, 6, 1), 2), ((4, 4, 5), 1)])
def test_patchify_roundtrip_and_torch_order(shape, p):
  x = jax.random.normal(jax.random.key(0), (2,) + shape)
  tokens = layers.patchify(x, p)
  np.testing.assert_array_equal(layers.unpatchify(tokens, shape, p), x)
  # torch.unfold order: token = row-major patch index, feature = (channel, dy, dx)
  h, w, c = shape
  i, j, ch, dy, dx = 1 % (h // p), (w // p) - 1, c - 1, p - 1, 0
  t = i * (w // p) + j
  f = ch * p * p + dy * p + dx
  assert tokens[1, t, f] == x[1, i * p + dy, j * p + dx, ch]


def test_score_denoise_of_identity_flow_is_gaussian_tweedie():
  flow = make_flow()
  x = jax.random.normal(jax.random.key(2), (2, 4, 4, 2))
  variables = flow.init(jax.random.key(0), x, jnp.array([0, 1]))  # zero heads: z = x
  out = score_denoise(flow, variables, x, jnp.array([0, 1]), sigma=0.3)
  np.testing.assert_allclose(out, x * (1 - 0.09), atol=1e-5)


def test_nll_and_bits_per_dim_of_standard_normal():
  z = jnp.zeros((3, 10))
  nll = primitives.gaussian_nll(z, jnp.zeros(3))
  np.testing.assert_allclose(nll, 5 * np.log(2 * np.pi), rtol=1e-6)
  bpd = primitives.bits_per_dim(nll, 10)
  np.testing.assert_allclose(bpd, (0.5 * np.log(2 * np.pi) + np.log(127.5)) / np.log(2), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_outputs(setup):
  flow32, variables, x, y = setup
  flow16 = make_flow(dtype=jnp.bfloat16)
  z16, logdet16, _ = flow16.apply(variables, x, y)
  z32, logdet32, _ = flow32.apply(variables, x, y)
  assert z16.dtype == jnp.float32 and logdet16.dtype == jnp.float32
  assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32
  np.testing.assert_allclose(z16, z32, atol=0.1)


def test_from_config_reads_the_model_group():
  from biflow_jax import config_lib
  cfg = config_lib.base_config().model
  flow = ForwardFlow.from_config(cfg)
  assert flow.image_shape == (28, 28, 1) and flow.num_tokens == 49 and flow.token_dim == 16


@pytest.mark.parametrize('kwargs,match', [
    (dict(image_shape=(10, 10, 1), patch_size=4), 'not divisible by the patch size'),
    (dict(image_shape=(8, 8, 1), patch_size=2, num_classes=3), None),
])
def test_bad_config_is_a_clear_error(kwargs, match):
  flow = make_flow(**kwargs)
  x = jnp.zeros((1,) + flow.image_shape)
  if match is None:
    flow.init(jax.random.key(0), x, jnp.array([0]))
  else:
    with pytest.raises(ValueError, match=match):
      flow.init(jax.random.key(0), x, jnp.array([0]))


def test_bad_inputs_are_clear_errors(setup):
  flow, variables, x, y = setup
  with pytest.raises(ValueError, match='expects NHWC inputs of shape'):
    flow.apply(variables, jnp.zeros((2, 4, 4, 3)), y)  # wrong channel count
  with pytest.raises(ValueError, match='label 3 is out of range'):
    flow.apply(variables, x, jnp.array([0, 3]))
  with pytest.raises(ValueError, match='out of range'):
    flow.apply(variables, x, jnp.array([-2, 0]))
  with pytest.raises(ValueError, match='one per example'):
    flow.apply(variables, x, jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match='expects tokens of shape'):
    flow.apply(variables, jnp.zeros((2, 5, 8)), y, method=ForwardFlow.inverse)
  with pytest.raises(ValueError, match='unknown inverse mode'):
    flow.apply(variables, jnp.zeros((2, 4, 8)), y, method=ForwardFlow.inverse, mode='newton')
