"""The accelerator paths compute what the default path computes: fused attention
(jax.nn.dot_product_attention), scanned layers and blocks (stacked params), remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.models import layers, layout
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.models.generator import ReverseModel

TOL = 1e-5  # the parity bound, float32


def perturb(tree, scale=0.05, seed=1):
  """Fresh F and G are identities (zero-init heads / adaLN-zero); randomise them."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def max_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def rel_diff(a, b) -> float:
  """Largest |a - b| relative to the largest |a| over all leaves (gradients are not O(1))."""
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))
  return max_diff(a, b) / scale


FLOW = dict(image_shape=(4, 4, 2), patch_size=2, channels=16, num_blocks=3, layers_per_block=2,
            num_heads=2, num_classes=3, clip=1.0)


@pytest.fixture(scope='module')
def flow_setup():
  flow = ForwardFlow(**FLOW)
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 2))
  y = jnp.array([0, 2])
  params = perturb(flow.init(jax.random.key(0), x, y)['params'])
  z = jax.random.normal(jax.random.key(4), (2, flow.num_tokens, flow.token_dim))
  return flow, params, x, y, z


def run_flow(flow, params, x, y, z):
  """Forward, exact inverse with guidance (decode step), Jacobi/GSJ inverse with guidance."""
  v = {'params': params}
  out, logdet, trajectory = flow.apply(v, x, y)
  exact = flow.apply(v, z, y, method=ForwardFlow.inverse, guidance=1.5, attn_temp=0.9)
  fixed, _, _ = flow.apply(v, z, y, method=ForwardFlow.inverse, mode='fixed_point',
                           guidance=1.5, attn_temp=0.9, tol=0.0, num_groups=2)
  return out, logdet, trajectory, exact, fixed


@pytest.mark.parametrize('impl', ['xla', 'auto'])
def test_fused_attention_matches_the_einsum_path(flow_setup, impl):
  flow, params, x, y, z = flow_setup
  ref = run_flow(flow, params, x, y, z)
  fused = run_flow(flow.clone(attention=impl), params, x, y, z)
  assert max_diff(ref, fused) < TOL
  assert float(jnp.max(jnp.abs(ref[3] - ref[4]))) < 1e-4  # the inverses are themselves exact


def test_attention_primitive_causal_bidirectional_and_decode():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 3, 8)) for i in range(3))
  for kwargs in (dict(causal=True), dict(), dict(causal=True, temperature=0.7),
                 dict(kv_length=jnp.int32(4))):
    ref = layers.attend(q[:, :1] if 'kv_length' in kwargs else q, k, v, impl='einsum', **kwargs)
    got = layers.attend(q[:, :1] if 'kv_length' in kwargs else q, k, v, impl='xla', **kwargs)
    assert float(jnp.max(jnp.abs(ref - got))) < TOL, kwargs
  # A chunk of queries at positions 2..4 against all keys (q_offset: the cached GSJ sweep)
  # is those rows of causal attention, in both implementations.
  causal = layers.attend(q, k, v, impl='einsum', causal=True)
  for impl in ('einsum', 'xla'):
    chunk = layers.attend(q[:, 2:5], k, v, impl=impl, q_offset=jnp.int32(2))
    assert float(jnp.max(jnp.abs(chunk - causal[:, 2:5]))) < TOL, impl
  # A traced temperature (it scales the queries) gives the same result as a static one.
  traced = jax.jit(lambda t: layers.attend(q, k, v, impl='xla', causal=True, temperature=t))(0.7)
  static = layers.attend(q, k, v, impl='einsum', causal=True, temperature=0.7)
  assert float(jnp.max(jnp.abs(traced - static))) < TOL
  with pytest.raises(ValueError, match='unknown attention implementation'):
    layers.attend(q, k, v, impl='flash')


@pytest.mark.parametrize('remat', ['none', 'dots'])
def test_scanned_flow_matches_the_unrolled_one(flow_setup, remat):
  flow, params, x, y, z = flow_setup
  scanned = flow.clone(scan=True, remat=remat)
  stacked = layout.to_flow_layout(params, scan=True)
  assert stacked['blocks']['layers']['attn']['qkv']['kernel'].shape == (3, 2, 16, 48)
  if remat == 'none':  # remat only changes the backward pass: the inverses once suffice
    assert max_diff(run_flow(flow, params, x, y, z), run_flow(scanned, stacked, x, y, z)) < TOL
  # Gradients of the NLL agree too, once brought to one layout.
  def nll(f, p):
    out, logdet, _ = f.apply({'params': p}, x, y)
    return jnp.sum(out ** 2) - jnp.sum(logdet)
  g_ref = jax.grad(lambda p: nll(flow, p))(params)
  g_scan = layout.to_flow_layout(jax.grad(lambda p: nll(scanned, p))(stacked), scan=False)
  assert rel_diff(g_ref, g_scan) < TOL


def test_scanned_init_has_the_stacked_tree_of_the_unrolled_one(flow_setup):
  flow, params, x, y, _ = flow_setup
  fresh = flow.clone(scan=True).init(jax.random.key(0), x, y)['params']
  want = jax.tree.map(jnp.shape, layout.to_flow_layout(params, scan=True))
  assert jax.tree.map(jnp.shape, fresh) == want


def test_layout_round_trips_exactly(flow_setup):
  _, params, _, _, _ = flow_setup
  numpy_params = jax.tree.map(np.asarray, params)
  stacked = layout.to_flow_layout(numpy_params, scan=True)
  assert isinstance(stacked['blocks']['pos_embed'], np.ndarray)
  back = layout.to_flow_layout(stacked, scan=False)
  assert jax.tree.structure(back) == jax.tree.structure(numpy_params)
  assert max_diff(back, numpy_params) == 0
  assert layout.to_flow_layout(stacked, scan=True) == stacked  # already there: unchanged
  with pytest.raises(ValueError, match="not F's params"):
    layout.to_flow_layout({'x': 1}, scan=True)


G = dict(num_tokens=8, token_dim=4, width=32, depth=5, num_heads=2, num_stages=3, num_classes=3)


@pytest.mark.parametrize('kwargs', [dict(attention='xla'),
                                    dict(scan=True, remat='full', attention='auto')])
def test_generator_paths_match_the_default(kwargs):
  model = ReverseModel(**G)
  z = jax.random.normal(jax.random.key(0), (2, 8, 4))
  y, w = jnp.array([0, 2]), jnp.array([0.0, 2.0])
  params = perturb(model.init(jax.random.key(0), z, y, w)['params'], scale=0.1)
  other = model.clone(**kwargs)
  converted = layout.to_generator_layout(params, other.scan)
  ref = model.apply({'params': params}, z, y, w)
  got = other.apply({'params': converted}, z, y, w)
  assert max_diff(ref, got) < TOL
  loss = lambda m, p: jnp.sum(m.apply({'params': p}, z, y, w)[0] ** 2)
  g_ref = jax.grad(lambda p: loss(model, p))(params)
  g_got = layout.to_generator_layout(jax.grad(lambda p: loss(other, p))(converted), scan=False)
  assert rel_diff(g_ref, g_got) < TOL
  assert layout.to_generator_layout(layout.to_generator_layout(params, True), False).keys() \
      == params.keys()


def test_bad_switches_are_clear_errors(flow_setup):
  flow, params, x, y, _ = flow_setup
  with pytest.raises(ValueError, match='unknown remat policy'):
    flow.clone(remat='some').init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match='unknown attention implementation'):
    ReverseModel(**G, attention='flash').init(jax.random.key(0), jnp.zeros((1, 8, 4)))


# 4 groups = num_tokens: one token per group. The unrolled layout compiles a loop per group
# and block (10-24 s each on 2 cores), so CI keeps one multi-group case of it.
@pytest.mark.parametrize('num_groups,scan', [
    (1, True), (3, True), (4, True), (3, False),
    pytest.param(1, False, marks=pytest.mark.slow), pytest.param(4, False, marks=pytest.mark.slow)])
def test_cached_gauss_seidel_jacobi_matches_the_recomputing_one(flow_setup, num_groups, scan):
  """kv_cache=True (the default) against kv_cache=False and the exact inverse, unguided and
  guided (classes, attn_temp), in both parameter layouts; the same sweep counts."""
  flow, params, _, y, z = flow_setup
  flow = flow.clone(scan=scan)
  v = {'params': layout.to_flow_layout(params, scan)}
  for guidance in (0, 1.5):
    kw = dict(method=ForwardFlow.inverse, guidance=guidance, attn_temp=0.9)
    fixed = dict(kw, mode='fixed_point', tol=0.0, num_groups=num_groups)
    ref, ref_iters, _ = flow.apply(v, z, y, kv_cache=False, **fixed)
    got, iters, residual = flow.apply(v, z, y, **fixed)
    assert max_diff(ref, got) < TOL
    np.testing.assert_array_equal(np.asarray(iters), np.asarray(ref_iters))
    assert max_diff(flow.apply(v, z, y, **kw), got) < 1e-4
    assert np.all(np.asarray(residual) <= 1e-4)
