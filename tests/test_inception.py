"""FID InceptionV3 parity with pytorch-fid 0.3.0 (tests/testdata/fid_inception_reference.*).

The reference was produced with deterministic stand-in weights (tests/testdata/weight_recipe.py,
a copy of /work/shared/reference/weight_recipe.py), so the test rebuilds the state dict,
imports it through the .npz importer and compares pool3 features and 1008 logits.
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.convert import inception as convert
from biflow_jax.evaluation import adm, fingerprint as fp
from biflow_jax.models import inception
import reference_vectors

REF_NPZ = reference_vectors.DATA / 'fid_inception_reference.npz'
ATOL = 1e-4


recipe_weight = reference_vectors.recipe()


def stand_in_state_dict():
  order = reference_vectors.state_dict_order('fid_inception')
  state = {}
  for k, (name, shape) in enumerate(order):  # k counts every entry, skipped ones too
    if name.endswith('num_batches_tracked'):
      state[name] = np.array(0, np.int64)
    else:
      state[name] = recipe_weight(name, tuple(shape), k)
  return state


@pytest.fixture(scope='module')
def weights_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp('fid') / 'pt_inception_standin.npz'
  np.savez(path, **stand_in_state_dict())
  return path


@pytest.fixture(scope='module')
def reference():
  with np.load(REF_NPZ) as ref:
    return {k: ref[k] for k in ref.files}


@pytest.fixture(scope='module')
def variables(weights_npz):
  return convert.load_fid_inception(weights_npz)


@pytest.fixture(scope='module')
def jitted_outputs(variables, reference):
  images = reference['images_01'].transpose(0, 2, 3, 1)  # NCHW -> NHWC
  pool3, logits = jax.jit(inception.fid_features)(variables, images)
  return np.asarray(pool3), np.asarray(logits)


def test_variables_layout(variables):
  assert set(variables) == {'params', 'batch_stats'}
  params = variables['params']
  assert params['Conv2d_1a_3x3']['conv']['kernel'].shape == (3, 3, 3, 32)
  assert params['Mixed_6b']['branch7x7_2']['conv']['kernel'].shape == (1, 7, 128, 128)
  assert params['fc']['kernel'].shape == (2048, 1008)
  assert variables['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'].shape == (192,)
  n_params = sum(x.size for x in jax.tree.leaves(variables))
  order = reference_vectors.state_dict_order('fid_inception')
  n_torch = sum(int(np.prod(s)) for n, s in order if not n.endswith('num_batches_tracked'))
  assert n_params == n_torch


def test_parity_with_pytorch_fid(jitted_outputs, reference):
  pool3, logits = jitted_outputs
  assert pool3.shape == (2, inception.POOL3_DIM) and logits.shape == (2, inception.NUM_LOGITS)
  np.testing.assert_allclose(pool3, reference['pool3_features'], atol=ATOL, rtol=0)
  np.testing.assert_allclose(logits, reference['logits_1008'], atol=ATOL, rtol=0)


def test_eager_matches_jit(variables, reference, jitted_outputs):
  images = jnp.asarray(reference['images_01'][:1].transpose(0, 2, 3, 1))
  pool3, logits = inception.fid_features(variables, images)
  np.testing.assert_allclose(pool3, jitted_outputs[0][:1], atol=1e-5)
  np.testing.assert_allclose(logits, jitted_outputs[1][:1], atol=1e-5)


def test_env_var_and_param_prefix(tmp_path, monkeypatch, weights_npz, variables):
  with np.load(weights_npz) as data:
    prefixed = {f'param/{k}': data[k] for k in data.files}
  path = tmp_path / 'prefixed.npz'
  np.savez(path, **prefixed)
  monkeypatch.setenv(convert.ENV_VAR, str(path))
  loaded = convert.load_fid_inception()
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_bad_state_dict_is_rejected(weights_npz):
  state = convert.read_state_dict(weights_npz)
  del state['Mixed_5b.branch1x1.bn.running_mean']
  state['extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match='missing.*Mixed_5b.branch1x1.bn.running_mean'):
    convert.convert_state_dict(state)


def test_missing_file_message(tmp_path, monkeypatch):
  monkeypatch.delenv(convert.ENV_VAR, raising=False)
  for path in (tmp_path / 'nope.pth', None):
    with pytest.raises(FileNotFoundError) as info:
      convert.load_fid_inception(path)
    msg = str(info.value)
    assert 'pt_inception-2015-12-05-6726825d.pth' in msg
    assert 'github.com/mseitzer/pytorch-fid/releases' in msg
    assert 'np.savez' in msg and 'torch.load' in msg
    assert convert.ENV_VAR in msg


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None, reason='torch is installed')
def test_pth_without_torch_says_convert(tmp_path):
  path = tmp_path / 'weights.pth'
  path.write_bytes(b'not really a checkpoint')
  with pytest.raises(ImportError, match='npz'):
    convert.load_fid_inception(path)


# ----------------------------------------------------------------------------- resize

def torch_bilinear_reference(img, out_h, out_w):
  """Direct numpy port of ATen upsample_bilinear2d, align_corners=False, size given (HWC)."""
  h, w = img.shape[:2]
  out = np.zeros((out_h, out_w) + img.shape[2:], np.float64)

  def source(dst, in_size, out_size):
    s = max((in_size / out_size) * (dst + 0.5) - 0.5, 0.0)
    i0 = int(s)
    i1 = i0 + (1 if i0 < in_size - 1 else 0)
    lam = s - i0
    return i0, i1, 1.0 - lam, lam

  for oy in range(out_h):
    y0, y1, wy0, wy1 = source(oy, h, out_h)
    for ox in range(out_w):
      x0, x1, wx0, wx1 = source(ox, w, out_w)
      out[oy, ox] = (wy0 * (wx0 * img[y0, x0] + wx1 * img[y0, x1])
                     + wy1 * (wx0 * img[y1, x0] + wx1 * img[y1, x1]))
  return out


@pytest.mark.parametrize('in_hw,out_hw', [
    ((5, 7), (11, 13)),    # upsampling
    ((17, 19), (6, 4)),    # downsampling (non-integer factors)
    ((16, 16), (8, 8)),    # downsampling by exactly 2
    ((6, 20), (13, 7)),    # up in H, down in W
    ((9, 9), (9, 9)),      # identity
])
def test_resize_matches_torch_half_pixel_bilinear(in_hw, out_hw):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2,) + in_hw + (3,)).astype(np.float32)
  got = np.asarray(jax.jit(inception.resize_bilinear, static_argnums=1)(x, out_hw))
  want = np.stack([torch_bilinear_reference(im, *out_hw) for im in x])
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Cross-check: jax.image.resize without antialiasing is the same half-pixel rule.
  jax_resized = jax.image.resize(x, (2,) + out_hw + (3,), 'bilinear', antialias=False)
  np.testing.assert_allclose(got, jax_resized, atol=1e-6)


def test_resize_to_299_and_normalisation(reference):
  img = reference['images_01'][0].transpose(1, 2, 0)
  want = torch_bilinear_reference(img, 299, 299) * 2.0 - 1.0
  got = np.asarray(jax.jit(inception.preprocess)(img[None]))[0]
  assert got.shape == (299, 299, 3)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_avg_pool_excludes_padding():
  x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3) ** 1.5
  got = np.asarray(inception._avg_pool_exclude_pad(jnp.asarray(x)))  # pylint: disable=protected-access
  want = np.zeros_like(x)
  for i in range(4):
    for j in range(5):
      want[:, i, j] = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_suite_features_are_the_adm_suites_tensors(variables, weights_npz, reference):
  """What the ADM suite reads: pool3, 'mixed_6/conv'[..., :7] (Mixed_6d's 1x1 branch, the
  first 7 of Mixed_6d's 768 output channels, 17x17 -> 2023) and pool3 @ fc kernel."""
  images_01 = reference['images_01'].transpose(0, 2, 3, 1)
  out = jax.jit(inception.suite_features)(variables, images_01)
  pool3, logits = jax.jit(inception.fid_features)(variables, images_01)
  assert out['spatial'].shape == (2, inception.SPATIAL_DIM) == (2, 2023)
  np.testing.assert_array_equal(out['pool'], pool3)
  np.testing.assert_allclose(out['logits_unbiased'] + variables['params']['fc']['bias'], logits,
                             atol=1e-5)
  capture = lambda module, method: module.scope.path == ('Mixed_6d',)
  _, state = jax.jit(lambda v, x: inception.InceptionV3().apply(
      v, inception.preprocess(x), mutable=['intermediates'],
      capture_intermediates=capture))(variables, images_01)
  mixed_6d = state['intermediates']['Mixed_6d']['__call__'][0]
  assert mixed_6d.shape == (2, 17, 17, 768)
  np.testing.assert_allclose(out['spatial'], mixed_6d[..., :7].reshape(2, -1), atol=1e-5)
  # The suite's input: uint8 RGB or grey, any batch size (padded to one compiled shape).
  net = adm.make_suite_net(str(weights_npz), batch=4)
  uint8 = np.round(images_01 * 255).astype(np.uint8)
  got = net.fn(np.concatenate([uint8, uint8[:1]]))
  assert {k: v.shape[0] for k, v in got.items()} == {'pool': 3, 'spatial': 3,
                                                     'logits_unbiased': 3}
  want = jax.jit(inception.suite_features)(variables, uint8.astype(np.float32) / 255)
  np.testing.assert_allclose(got['pool'][:2], want['pool'], atol=1e-5)
  np.testing.assert_allclose(got['spatial'][2], want['spatial'][0], atol=1e-5)
  grey = net.fn(uint8[..., :1])
  rgb = net.fn(np.repeat(uint8[..., :1], 3, axis=-1))
  np.testing.assert_allclose(grey['pool'], rgb['pool'], atol=1e-6)
  assert net.fingerprint['weights_sha256'] == {weights_npz.name: fp.file_sha256(weights_npz)}
  with pytest.raises(ValueError, match='uint8 NHWC'):
    net.fn(images_01)
