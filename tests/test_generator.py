"""Properties of the reverse model G: shapes, sizes, bidirectionality, conditioning, heads."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from biflow_jax.models import generator
from biflow_jax.models.generator import ReverseModel, count_params, stage_depths

T, D, B = 8, 4, 3  # tokens, token dim, flow blocks (= G's flow stages)


def make_model(num_classes=3, head_mode='per_stage', dtype=jnp.float32, depth=5, mlp='swiglu'):
  return ReverseModel(num_tokens=T, token_dim=D, width=32, depth=depth, num_heads=2,
                      num_stages=B, mlp=mlp, num_classes=num_classes, head_mode=head_mode,
                      dtype=dtype)


def inputs(batch=2, seed=0):
  z = jax.random.normal(jax.random.key(seed), (batch, T, D))
  return z, jnp.array([0, 2], jnp.int32)[:batch], jnp.array([0.0, 2.0])[:batch]


def perturb(params, scale=0.1, seed=1):
  """A fresh G is identity layers with c ignored (adaLN-zero); randomise it so tests bite."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def model_config(image_size, in_channels, patch_size, num_blocks, num_classes, dtype='float32'):
  return ml_collections.ConfigDict(dict(image_size=image_size, in_channels=in_channels,
                                        patch_size=patch_size, num_blocks=num_blocks,
                                        num_classes=num_classes, dtype=dtype))


IMAGENET256 = model_config(32, 4, 2, 8, 1000)  # VAE latent 32x32x4, patch 2 -> T=256, D=16
MNIST = model_config(28, 1, 4, 4, 10)


@pytest.fixture(scope='module')
def perturbed():
  model = make_model()
  z, y, w = inputs()
  params = perturb(model.init(jax.random.key(0), z, y, w)['params'])
  return model, params


def differs(a, b, tol=1e-4):
  return float(jnp.max(jnp.abs(a - b))) > tol


@pytest.mark.parametrize('num_classes', [3, 0])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(num_classes, dtype):
  model = make_model(num_classes=num_classes, dtype=dtype)
  z, y, w = inputs()
  y = y if num_classes else None
  variables = model.init(jax.random.key(0), z, y, w)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  x_out, projections = jax.jit(model.apply)(variables, z, y, w)
  assert x_out.shape == (2, T, D) and x_out.dtype == jnp.float32
  assert len(projections) == B
  assert all(p.shape == (2, T, D) and p.dtype == jnp.float32 for p in projections)
  assert np.isfinite(np.asarray(x_out)).all()
  model.apply(variables, z)  # y and w default to null / zero


def test_param_counts_imagenet256():
  counts = {s: count_params(ReverseModel.from_config(ml_collections.ConfigDict(dict(size=s)),
                                                     IMAGENET256)) for s in ('S', 'B', 'L', 'XL')}
  assert 125e6 <= counts['B'] <= 140e6, counts  # the paper's BiFlow-B/2: 133M
  assert counts['S'] < counts['B'] < counts['L'] < counts['XL'], counts


def test_from_config_reads_overrides_and_raises_small_depths():
  m = ReverseModel.from_config(ml_collections.ConfigDict(dict(size='tiny')), MNIST)
  assert (m.num_tokens, m.token_dim, m.num_stages, m.num_classes) == (49, 16, 4, 10)
  assert m.depth == 5  # tiny's depth 3 raised to B + 1
  r = ml_collections.ConfigDict(dict(size='S', width=96, depth=7, num_heads=3, mlp='gelu',
                                     head_mode='shared', dtype='bfloat16'))
  m = ReverseModel.from_config(r, MNIST)
  assert (m.width, m.depth, m.num_heads, m.mlp, m.head_mode) == (96, 7, 3, 'gelu', 'shared')
  assert m.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='size'):
    ReverseModel.from_config(ml_collections.ConfigDict(dict(size='M')), MNIST)


def test_bidirectional(perturbed):
  model, params = perturbed
  z, y, w = inputs()
  out, proj = model.apply({'params': params}, z, y, w)
  out2, proj2 = model.apply({'params': params}, z.at[:, -1].add(1.0), y, w)
  assert differs(out[:, 0], out2[:, 0])  # token 0 sees the last token (F's blocks cannot)
  assert differs(proj[0][:, 0], proj2[0][:, 0])


def test_fresh_model_ignores_conditioning_then_learns_to_use_it():
  model = make_model()
  z, y, w = inputs()
  params = model.init(jax.random.key(0), z, y, w)['params']
  base, base_proj = model.apply({'params': params}, z, y, w)
  for yy, ww in [(None, w), (y, None), (jnp.array([1, 1]), 5.0 * w)]:
    out, proj = model.apply({'params': params}, z, yy, ww)
    np.testing.assert_array_equal(out, base)
    for p, q in zip(proj, base_proj):
      np.testing.assert_array_equal(p, q)

  params = perturb(params)
  base, _ = model.apply({'params': params}, z, y, w)
  assert differs(model.apply({'params': params}, z, jnp.array([1, 1]), w)[0], base)
  assert differs(model.apply({'params': params}, z, y, w + 0.5)[0], base)


def test_null_label_equals_none(perturbed):
  model, params = perturbed
  z, _, w = inputs()
  a, pa = model.apply({'params': params}, z, jnp.array([-1, -1]), w)
  b, pb = model.apply({'params': params}, z, None, w)
  np.testing.assert_array_equal(a, b)
  for p, q in zip(pa, pb):
    np.testing.assert_array_equal(p, q)
  # The null row is the last row of the class table.
  assert params['class_embed']['embedding'].shape == (3 + 1, 32)


def _token_heads(params):
  """Names of the Dense layers that map to token space (the heads' projections)."""
  return sorted(k for k, v in params.items() if isinstance(v, dict) and 'kernel' in v and v['kernel'].shape[-1] == D)


def test_head_modes_parameters():
  z, y, w = inputs()
  shared = make_model(head_mode='shared').init(jax.random.key(0), z, y, w)['params']
  per_stage = make_model(head_mode='per_stage').init(jax.random.key(0), z, y, w)['params']
  assert _token_heads(shared) == ['out_proj']
  assert _token_heads(per_stage) == ['out_proj'] + [f'stage_proj_{j}' for j in range(B)]
  assert 'stage_mod' not in shared and 'stage_mod' in per_stage


def test_shared_head_projections_use_the_output_head():
  """A fresh trunk is identity layers, so every h^j is the same and, through the one
  shared head, every projection equals x_out."""
  model = make_model(head_mode='shared')
  z, y, w = inputs()
  out, proj = model.apply(model.init(jax.random.key(0), z, y, w), z, y, w)
  for p in proj:
    np.testing.assert_allclose(p, out, rtol=1e-6, atol=1e-6)


def test_stage_depths_rule():
  assert stage_depths(12, 8) == (2, 2, 2, 1, 1, 1, 1, 1, 1)  # B/2 at ImageNet-256
  assert stage_depths(5, 4) == (1, 1, 1, 1, 1)
  assert stage_depths(7, 2) == (3, 2, 2)
  assert sum(stage_depths(28, 8)) == 28
  with pytest.raises(ValueError, match='depth'):
    stage_depths(3, 4)
  with pytest.raises(ValueError, match='depth'):
    make_model(depth=3).init(jax.random.key(0), *inputs())


def test_stage_split_is_what_the_model_runs(perturbed):
  """depth 5, B = 3 -> (2, 1, 1, 1): layer 2 is stage 1, so it cannot move projections[0]."""
  model, params = perturbed
  assert model.stage_depths == (2, 1, 1, 1)
  z, y, w = inputs()
  out, proj = model.apply({'params': params}, z, y, w)
  changed = dict(params, blocks_2=perturb(params['blocks_2'], seed=7))
  out2, proj2 = model.apply({'params': changed}, z, y, w)
  np.testing.assert_array_equal(proj[0], proj2[0])
  assert differs(proj[1], proj2[1]) and differs(proj[2], proj2[2]) and differs(out, out2)


def test_gelu_mlp_and_errors():
  model = make_model(mlp='gelu')
  z, y, w = inputs()
  params = model.init(jax.random.key(0), z, y, w)['params']
  assert params['blocks_0']['mlp']['fc_in']['kernel'].shape == (32, 128)
  with pytest.raises(ValueError, match='out of range'):
    model.apply({'params': params}, z, jnp.array([0, 3]), w)
  with pytest.raises(ValueError, match='tokens of shape'):
    model.apply({'params': params}, z[:, :-1], y, w)
  with pytest.raises(ValueError, match='head_mode'):
    make_model(head_mode='both').init(jax.random.key(0), z, y, w)
  assert generator.swiglu_hidden(768, 4) == 2048


def test_alignment_loss_reaches_the_trunk_at_init():
  """Heads are not zero-initialised, so a loss on projections[0] trains stage 0 from step 1."""
  model = make_model()
  z, y, w = inputs()
  params = model.init(jax.random.key(0), z, y, w)['params']
  loss = lambda p: jnp.mean(model.apply({'params': p}, z, y, w)[1][0] ** 2)
  grads = jax.grad(loss)(params)
  norm = lambda tree: float(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(tree)))
  assert norm(grads['embed_in']) > 0 and norm(grads['blocks_0']['modulation']) > 0
  assert norm(grads['blocks_2']) == 0  # stage 1 and later do not feed projections[0]


def test_w_embed_scale_sets_the_fourier_frequencies():
  w = jnp.array([0.0, 0.25, 1.5])
  np.testing.assert_allclose(generator.fourier_features(w, scale=10.0),
                             generator.fourier_features(w / 100.0), rtol=1e-5, atol=1e-6)
  # w = 0 is every feature's (cos 1, sin 0) whatever the scale: unguided G is unchanged
  np.testing.assert_array_equal(generator.fourier_features(jnp.zeros(2), scale=10.0),
                                generator.fourier_features(jnp.zeros(2)))
  # the fastest feature moves at most `scale` radians per unit of w: at 10 a w step of 0.0025
  # barely moves any feature, at the default 1000 it moves the fastest by 2.5 radians
  grid = jnp.arange(0.0, 3.0, 0.0025)
  for scale, lo, hi in ((10.0, 0.0, 0.03), (1000.0, 1.0, 3.0)):
    step = jnp.max(jnp.abs(jnp.diff(generator.fourier_features(grid, scale=scale), axis=0)))
    assert lo <= float(step) <= hi, (scale, float(step))


def test_w_embed_scale_from_config_default_and_errors():
  assert ReverseModel.from_config(ml_collections.ConfigDict(dict(size='tiny')),
                                  MNIST).w_embed_scale == generator.W_EMBED_SCALE == 1000.0
  m = ReverseModel.from_config(ml_collections.ConfigDict(dict(size='tiny', w_embed_scale=10)),
                               MNIST)
  assert m.w_embed_scale == 10.0
  z, y, w = inputs()
  model = make_model()
  params = perturb(model.init(jax.random.key(0), z, y, w)['params'])
  slow = model.clone(w_embed_scale=10.0)
  w_guided = jnp.array([0.25, 0.25])
  assert differs(slow.apply({'params': params}, z, y, w_guided)[0],
                 model.apply({'params': params}, z, y, w_guided)[0])
  np.testing.assert_array_equal(slow.apply({'params': params}, z, y, jnp.zeros(2))[0],
                                model.apply({'params': params}, z, y, jnp.zeros(2))[0])
  for bad in (0.0, -1.0, float('nan')):
    with pytest.raises(ValueError, match='w_embed_scale'):
      model.clone(w_embed_scale=bad).init(jax.random.key(0), z, y, w)


def test_unguided_embed_changes_only_rows_at_w_zero():
  assert not ReverseModel.from_config(ml_collections.ConfigDict(dict(size='tiny')),
                                      MNIST).unguided_embed
  assert ReverseModel.from_config(ml_collections.ConfigDict(dict(size='tiny', unguided_embed=True)),
                                  MNIST).unguided_embed
  z, y, _ = inputs()
  base = make_model()
  coded = base.clone(unguided_embed=True)
  w = jnp.array([0.0, 0.25])
  params = perturb(coded.init(jax.random.key(0), z, y, w)['params'])
  assert params['unguided_embed'].shape == (base.width,)
  assert 'unguided_embed' not in base.init(jax.random.key(0), z, y, w)['params']
  shared = {k: v for k, v in params.items() if k != 'unguided_embed'}
  # the code moves the conditioning of the w = 0 row by exactly the code, and no other row
  c_coded = coded.apply({'params': params}, y, w, 2, method=ReverseModel.condition)
  c_base = base.apply({'params': shared}, y, w, 2, method=ReverseModel.condition)
  np.testing.assert_allclose(c_coded[0] - c_base[0], params['unguided_embed'], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(c_coded[1], c_base[1])
  out_coded = coded.apply({'params': params}, z, y, w)[0]
  out_base = base.apply({'params': shared}, z, y, w)[0]
  assert differs(out_coded[0], out_base[0])
  np.testing.assert_array_equal(out_coded[1], out_base[1])
  # the code is trained: the loss at w = 0 has a gradient for it
  grads = jax.grad(lambda p: jnp.mean(coded.apply({'params': p}, z, y, jnp.zeros(2))[0] ** 2))(params)
  assert float(jnp.sum(grads['unguided_embed'] ** 2)) > 0
