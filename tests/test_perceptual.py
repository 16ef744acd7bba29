"""Perceptual distances: LPIPS-VGG (lpips 0.1.4) and ConvNeXt-V2 (timm 1.0.31) parity.

References (tests/testdata/lpips_vgg_reference.*, convnextv2_atto_reference.*) were made
with deterministic stand-in weights: tests/testdata/weight_recipe.py applied to each
entry k of the json's `state_dict_order`. LPIPS's heads are the real ones (`lin/<name>`
in the .npz) and its scaling layer the package's constants, so neither comes from the
recipe. The tests rebuild the weights, write them to .npz files and import them.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from biflow_jax.convert import perceptual as convert
from biflow_jax.models import perceptual_nets
from biflow_jax.objective import perceptual
from reference_vectors import recipe as _recipe
from reference_vectors import reference as _reference
from reference_vectors import state_dict_order as _order

ATOL = 1e-4
# The parity tests pin the reference numerics whatever the module defaults become.
HIGHEST, F32 = jax.lax.Precision.HIGHEST, jnp.float32
# bf16/'default' numerics (configs/imagenet256.py) vs the float32 path: bounds set at
# about 3x what test_bfloat16_default_precision_stays_close measured on CPU.
REL_LPIPS, ABS_CONVNEXT = 1e-2, 2e-4  # measured 3.2e-3 relative, 5.9e-5 absolute


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope='module')
def lpips_ref():
  return _reference('lpips_vgg')


def lpips_standin_state(lpips_ref=None):
  """The reference LPIPS state dict in lpips naming: stand-in VGG trunk, real heads."""
  lpips_ref = _reference('lpips_vgg') if lpips_ref is None else lpips_ref
  make = _recipe()
  state = {}
  for k, (name, shape) in enumerate(_order('lpips_vgg')):  # k counts every entry
    if name.startswith('net.'):
      state[name] = make(name, tuple(shape), k)
    elif name.startswith('lin'):
      state[name] = lpips_ref[f'lin/{name}']
  state['scaling_layer.shift'] = np.array(perceptual_nets.LPIPS_SHIFT, np.float32).reshape(1, 3, 1, 1)
  state['scaling_layer.scale'] = np.array(perceptual_nets.LPIPS_SCALE, np.float32).reshape(1, 3, 1, 1)
  return state


@pytest.fixture(scope='module')
def lpips_state(lpips_ref):
  return lpips_standin_state(lpips_ref)


@pytest.fixture(scope='module')
def lpips_file(lpips_state, tmp_path_factory):
  path = tmp_path_factory.mktemp('lpips') / 'lpips_vgg_standin.npz'
  np.savez(path, **lpips_state)
  return path


@pytest.fixture(scope='module')
def lpips_params(lpips_file):
  return convert.load_lpips_params(lpips_file)


def test_lpips_parity(lpips_params, lpips_ref):
  dist = jax.jit(perceptual.lpips_distance, static_argnums=0)
  got = np.asarray(dist(perceptual_nets.LPIPS(precision=HIGHEST, dtype=F32), lpips_params, _nhwc(lpips_ref['x0']),
                        _nhwc(lpips_ref['x1'])))
  want = lpips_ref['distance']
  err = np.max(np.abs(got - want))
  print(f'LPIPS max abs err {err:.3g}, max rel err {np.max(np.abs(got - want) / want):.3g}')
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)


def test_lpips_torchvision_names(lpips_state, lpips_params, tmp_path):
  """torchvision `features.N` trunk + lpips heads in a second file == net.slice names."""
  trunk = {}
  for name, value in lpips_state.items():
    if name.startswith('net.slice'):
      trunk['features.' + name.split('.', 2)[2]] = value
  trunk['classifier.0.weight'] = np.zeros((4, 8), np.float32)  # ignored
  heads = {name: value for name, value in lpips_state.items() if name.startswith('lin')}
  np.savez(tmp_path / 'vgg16.npz', **trunk)
  np.savez(tmp_path / 'heads.npz', **heads)
  params = convert.load_lpips_params(f"{tmp_path / 'vgg16.npz'},{tmp_path / 'heads.npz'}")
  jax.tree.map(np.testing.assert_array_equal, params, lpips_params)
  # Trunk alone: the error says the heads are missing and where they come from.
  with pytest.raises(ValueError, match=r'(?s)missing.*lin0\.model\.1\.weight.*vgg\.pth'):
    convert.load_lpips_params([tmp_path / 'vgg16.npz'])


def test_lpips_rejects_foreign_scaling(lpips_state):
  state = dict(lpips_state, **{'scaling_layer.shift': np.zeros((1, 3, 1, 1), np.float32)})
  with pytest.raises(ValueError, match='scaling_layer.shift'):
    convert.convert_lpips_state_dict(state)


# ----------------------------------------------------------------------------- ConvNeXt-V2


@pytest.fixture(scope='module')
def convnext_ref():
  return _reference('convnextv2_atto')


@pytest.fixture(scope='module')
def convnext_state():
  make = _recipe()
  return {name: make(name, tuple(shape), k)
          for k, (name, shape) in enumerate(_order('convnextv2_atto'))}


@pytest.fixture(scope='module')
def convnext_file(convnext_state, tmp_path_factory):
  path = tmp_path_factory.mktemp('convnext') / 'convnextv2_atto_standin.npz'
  np.savez(path, **convnext_state)
  return path


@pytest.fixture(scope='module')
def convnext(convnext_file):
  return convert.load_convnext_params(convnext_file, 'atto')


def test_convnext_parity(convnext, convnext_ref):
  model, params = convnext
  model = model.clone(precision=HIGHEST, dtype=F32)
  x = _nhwc(convnext_ref['x'])

  @jax.jit
  def run(params, x):
    v = {'params': params}
    return (model.apply(v, x, method=perceptual_nets.ConvNeXtV2.forward_features),
            model.apply(v, x, method=perceptual_nets.ConvNeXtV2.pre_logits),
            model.apply(v, x))

  features, pre_logits, logits = jax.tree.map(np.asarray, run(params, x))
  for name, got, want in (('features', features.transpose(0, 3, 1, 2), convnext_ref['features']),
                          ('pre_logits', pre_logits, convnext_ref['pre_logits']),
                          ('logits', logits, convnext_ref['logits'])):
    assert got.shape == want.shape, name
    print(f'ConvNeXt-V2 atto {name}: max abs err {np.max(np.abs(got - want)):.3g} '
          f'(max |ref| {np.max(np.abs(want)):.3g})')
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4, err_msg=name)


def test_convnext_wrong_variant(convnext_file):
  with pytest.raises(ValueError, match=r"(?s)wrong shape.*convnext_variant='atto'"):
    convert.load_convnext_params(convnext_file, 'femto')
  with pytest.raises(ValueError, match=r"(?s)convnext_variant='atto'"):
    convert.load_convnext_params(convnext_file, 'nano')  # 8 blocks in stage 2: missing keys
  with pytest.raises(ValueError, match='unknown ConvNeXt-V2 variant'):
    convert.load_convnext_params(convnext_file, 'gigantic')


def test_convnext_linear_mlp_names(convnext_state, convnext):
  """Linear (out, in) fc1/fc2 weights (timm tiny and up) import like 1x1 convs."""
  state = {k: (v[:, :, 0, 0] if '.mlp.fc' in k and v.ndim == 4 else v)
           for k, v in convnext_state.items()}
  _, params = convert.convert_convnext_state_dict(state, 'convnextv2_atto')
  jax.tree.map(np.testing.assert_array_equal, params, convnext[1])


# ----------------------------------------------------------------------------- distances


def _image_pair(size, batch=2):
  """(noise, smooth ramps) in [-1, 1]: clearly different even to stand-in weights."""
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  ramp = np.stack([xx, yy, xx * yy], axis=-1) * 2 - 1
  x1 = np.stack([ramp * (0.5 + 0.5 * b) for b in range(batch)]).astype(np.float32)
  return jnp.asarray(x0), jnp.asarray(x1)


@pytest.mark.parametrize('which', [
    pytest.param('lpips', marks=pytest.mark.slow),  # ~17 s; test_lpips_parity stays
    'convnext'])
def test_distance_zero_positive_and_gradient(which, lpips_params, convnext):
  if which == 'lpips':
    fn = jax.tree_util.Partial(perceptual.lpips_distance, perceptual_nets.LPIPS())
    params, size = lpips_params, 32
  else:
    model, params = convnext
    fn = jax.tree_util.Partial(perceptual.convnext_distance, model, resize=64)
    params, size = params, 48  # exercises the resize
  x0, x1 = _image_pair(size)
  dist = jax.jit(lambda p, a, b: fn(p, a, b))
  same = np.asarray(dist(params, x1, x1))
  diff = np.asarray(dist(params, x0, x1))
  assert same.shape == diff.shape == (2,)
  np.testing.assert_allclose(same, 0.0, atol=1e-7)
  assert np.all(diff > 1e-6), diff
  grad = np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(fn(params, a, x1))))(x0))
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


# ----------------------------------------------------------------------------- load_terms


def _cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(lpips_weight=0.0, lpips_weights='', convnext_weight=0.0,
                                       convnext_weights='', convnext_variant='base',
                                       convnext_resize=224))
  cfg.update(overrides)
  return cfg


def test_load_terms_off():
  assert perceptual.load_terms(_cfg()) == []
  assert perceptual.load_terms(_cfg(lpips_weights='/nowhere.npz')) == []  # weight 0: not read


@pytest.mark.parametrize('field, value, match', [
    ('lpips', '', r'(?s)config\.perceptual\.lpips_weights is empty.*vgg16-397923af\.pth.*vgg\.pth'),
    ('lpips', '/nowhere/lpips.npz', r'(?s)config\.perceptual\.lpips_weights: file /nowhere'),
    ('convnext', '', r'(?s)config\.perceptual\.convnext_weights is empty.*convnextv2_base'
                     r'\.fcmae_ft_in22k_in1k.*model\.safetensors'),
    ('convnext', '/nowhere/cx.safetensors', r'config\.perceptual\.convnext_weights: file'),
])
def test_load_terms_missing_file(field, value, match):
  cfg = _cfg(**{f'{field}_weight': 0.5, f'{field}_weights': value})
  with pytest.raises(FileNotFoundError, match=match):
    perceptual.load_terms(cfg)


def test_load_terms_loads(lpips_file, convnext_file, lpips_params):
  terms = perceptual.load_terms(_cfg(lpips_weight=0.5, lpips_weights=str(lpips_file),
                                     convnext_weight=0.25, convnext_weights=str(convnext_file),
                                     convnext_variant='atto', convnext_resize=32))
  assert [(t.name, t.weight) for t in terms] == [('lpips', 0.5), ('convnext', 0.25)]
  jax.tree.map(np.testing.assert_array_equal, terms[0].params, lpips_params)
  x0, x1 = _image_pair(32)

  @jax.jit
  def total(params, a, b):
    return sum(t.weight * jnp.mean(t.distance(p, a, b)) for t, p in zip(terms, params))

  value = total([t.params for t in terms], x0, x1)
  assert np.isfinite(value) and value > 0


# ------------------------------------------------------------------- fast numerics


def test_bfloat16_default_precision_stays_close(lpips_params, convnext):
  """config.perceptual.precision='default', dtype='bfloat16' (configs/imagenet256.py) against
  the float32/HIGHEST path; the distances stay float32. LPIPS is compared relative to its
  value. The stand-in ConvNeXt gives nearly equal features to any two images (distances
  ~1e-5), so its error is an absolute one on the features' scale: pre-logits are
  LayerNorm-ed (mean square ~1), where bf16's 2^-8 rounding alone moves a mean squared
  difference by ~1e-5..1e-4."""
  cfg = _cfg(precision='default', dtype='bfloat16')
  precision, dtype = perceptual.numerics(cfg)
  assert (precision, dtype) == (jax.lax.Precision.DEFAULT, jnp.bfloat16)
  x0, x1 = _image_pair(32, batch=3)
  fast = perceptual.lpips_term(1.0, lpips_params, precision, dtype)
  exact = perceptual.lpips_term(1.0, lpips_params)
  got, want = (np.asarray(jax.jit(t.distance)(lpips_params, x0, x1)) for t in (fast, exact))
  rel = np.max(np.abs(got - want) / np.abs(want))
  print(f'LPIPS bf16/default vs f32/highest: max relative difference {rel:.2e} ({want})')
  assert got.dtype == np.float32 and rel < REL_LPIPS
  model, params = convnext
  fast = perceptual.convnext_term(1.0, model.clone(precision=precision, dtype=dtype), params, 64)
  exact = perceptual.convnext_term(1.0, model, params, 64)
  got, want = (np.asarray(jax.jit(t.distance)(params, x0, x1)) for t in (fast, exact))
  err = np.max(np.abs(got - want))
  print(f'ConvNeXt bf16/default vs f32/highest: max abs difference {err:.2e} ({want})')
  assert got.dtype == np.float32 and err < ABS_CONVNEXT


@pytest.mark.parametrize('field, value', [('precision', 'fast'), ('dtype', 'float8')])
def test_numerics_bad_value_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf'config\.perceptual\.{field}={value!r}.*not one of'):
    perceptual.numerics(_cfg(**{field: value}))
