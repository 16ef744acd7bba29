"""TARFlow state dicts: parity with the PyTorch reference vectors (tests/testdata, see its
README), the learned prior variance, export, and the configs of public checkpoints."""
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax import config_lib
from biflow_jax.convert import tarflow
from biflow_jax.models.flow import ForwardFlow, gaussian_nll
from biflow_jax.objective import phases
from biflow_jax.training.experiment import build_models
from test_configs import load_config

DATA = Path(__file__).parent / 'testdata'
REF = DATA / 'tarflow_reference.npz'
ATOL = 1e-4


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module', params=[False, True], ids=['per_layer', 'scanned'])
def loaded(request):
  """The reference checkpoint in both parameter layouts: every parity test runs on each."""
  flow, params = tarflow.load(REF, scan=request.param)
  assert flow.scan == request.param and ('blocks' in params) == request.param
  return flow, {'params': params}, np.load(REF)


def test_architecture_is_inferred(loaded):
  flow, _, _ = loaded
  assert flow.image_shape == (8, 8, 1) and flow.patch_size == 2
  assert (flow.channels, flow.num_heads, flow.num_blocks, flow.layers_per_block) == (64, 2, 4, 2)
  assert (flow.num_classes, flow.mlp_ratio) == (10, 4)


def test_forward_parity(loaded):
  flow, variables, ref = loaded
  y = ref['y'].astype(np.int32)
  z, logdet, trajectory = flow.apply(variables, nhwc(ref['x']), y)
  np.testing.assert_allclose(z, ref['z'], atol=ATOL)
  assert len(trajectory) == 5
  for i in range(4):
    np.testing.assert_allclose(trajectory[i + 1], ref['trajectory'][i], atol=ATOL)
  # TARFlow's logdet is a mean over the T*D = 64 dims of each block; ours is the full sum.
  np.testing.assert_allclose(logdet, ref['logdet_per_sample'] * 64, atol=ATOL)
  np.testing.assert_allclose(np.mean(logdet / 64), np.mean(ref['logdets_mean']), atol=ATOL)


def test_dropped_labels_parity(loaded):
  flow, variables, ref = loaded
  y = ref['y_with_dropped'].astype(np.int32)
  z, logdet, _ = flow.apply(variables, nhwc(ref['x']), y)
  np.testing.assert_allclose(z, ref['z_with_dropped'], atol=ATOL)
  np.testing.assert_allclose(logdet, ref['logdets_with_dropped'] * 64, atol=ATOL)


@pytest.mark.parametrize('mode', ['exact', 'fixed_point'])
def test_inverse_and_sampling_parity(loaded, mode):
  flow, variables, ref = loaded
  y = ref['y'].astype(np.int32)

  def invert(z, **kw):
    out = flow.apply(variables, z, y, method=ForwardFlow.inverse, mode=mode, tol=0.0, **kw)
    return out if mode == 'exact' else out[0]

  np.testing.assert_allclose(invert(ref['z']), nhwc(ref['x_reconstructed']), atol=ATOL)
  np.testing.assert_allclose(invert(ref['noise']), nhwc(ref['samples']), atol=ATOL)
  np.testing.assert_allclose(invert(ref['noise'], guidance=1.5), nhwc(ref['samples_cfg1p5']),
                             atol=ATOL)


def test_npz_without_param_prefix(tmp_path, loaded):
  _, variables, ref = loaded
  plain = {k[len('param/'):]: ref[k] for k in ref.files if k.startswith('param/')}
  path = tmp_path / 'ckpt.npz'
  np.savez(path, **plain)
  shutil.copy(DATA / 'tarflow_reference.json', tmp_path / 'ckpt.json')
  flow, params = tarflow.load(path)
  z, _, _ = flow.apply({'params': params}, nhwc(ref['x']), ref['y'].astype(np.int32))
  np.testing.assert_allclose(z, ref['z'], atol=ATOL)


def test_a_soft_clipped_export_reads_back_soft_clipped(tmp_path):
  """The JSON beside an export states clip and clip_form, and the importer builds that F."""
  flow, params = tarflow.load(REF)
  soft = flow.clone(clip=0.5, clip_form='tanh')
  args = tarflow.tarflow_args(soft)
  assert (args['clip'], args['clip_form']) == (0.5, 'tanh')
  assert 'bounds (tanh, model.clip_form)' in tarflow.export_caveats(soft)[0]
  path = tmp_path / 'soft.npz'
  np.savez(path, **tarflow.export_state_dict(soft, params))
  (tmp_path / 'soft.json').write_text(json.dumps(args))
  back, back_params = tarflow.load(path)
  assert (back.clip, back.clip_form) == (0.5, 'tanh')
  ref = np.load(REF)
  x, y = nhwc(ref['x']), ref['y'].astype(np.int32)
  z_soft = soft.apply({'params': params}, x, y)[0]
  np.testing.assert_array_equal(back.apply({'params': back_params}, x, y)[0], z_soft)
  # ... and the bound acts on this F: the hard form at the same clip is another function.
  z_hard = flow.clone(clip=0.5).apply({'params': params}, x, y)[0]
  assert float(jnp.max(jnp.abs(z_soft - z_hard))) > 1e-3


def test_explicit_geometry_without_sidecar(tmp_path):
  path = tmp_path / 'weights.npz'
  shutil.copy(REF, path)
  flow, _ = tarflow.load(path, in_channels=1, head_dim=32)
  assert flow.image_shape == (8, 8, 1) and flow.num_heads == 2
  with pytest.raises(ValueError, match='not divisible by head_dim'):
    tarflow.load(path, in_channels=1, head_dim=48)


def test_missing_and_wrong_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    tarflow.load(tmp_path / 'nope.npz')
  np.savez(tmp_path / 'other.npz', w=np.zeros(3))
  with pytest.raises(ValueError, match='not a TARFlow state dict'):
    tarflow.load(tmp_path / 'other.npz')


def test_pth_needs_torch_or_loads(tmp_path, loaded):
  """Reads a real .pth when torch is installed; otherwise the error says what to do."""
  _, _, ref = loaded
  path = tmp_path / 'ckpt.pth'
  shutil.copy(DATA / 'tarflow_reference.json', tmp_path / 'ckpt.json')
  if importlib.util.find_spec('torch') is None:
    path.write_bytes(b'not really torch')
    with pytest.raises(ImportError, match='needs PyTorch'):
      tarflow.load(path)
    return
  import torch
  state = {k[len('param/'):]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith('param/')}
  torch.save({'model': state}, path)
  flow, params = tarflow.load(path)
  z, _, _ = flow.apply({'params': params}, nhwc(ref['x']), ref['y'].astype(np.int32))
  np.testing.assert_allclose(z, ref['z'], atol=ATOL)


def test_reference_metadata_is_what_we_assume():
  meta = json.loads((DATA / 'tarflow_reference.json').read_text())
  assert meta['in_channels'] == 1 and meta['patch_size'] == 2 and meta['head_dim'] == 32


# ------------------------------------------------------------ prior variance, export

def reference_state(ref) -> dict:
  return {k[len('param/'):]: ref[k] for k in ref.files if k.startswith('param/')}


def test_learned_prior_variance_is_folded_into_f_exactly(tmp_path, loaded):
  """TARFlow samples x = F^-1(sqrt(var) eps): its prior is N(0, diag var). F with the
  checkpoint's var has that density and those samples, and no warning is raised."""
  flow, variables, ref = loaded
  assert not flow.prior_var  # the reference's var is all ones: no layer needed
  state = reference_state(ref)
  var = np.random.RandomState(0).uniform(0.25, 2.0, state['var'].shape).astype(np.float32)
  path = tmp_path / 'ckpt.npz'
  np.savez(path, **{**state, 'var': var})
  shutil.copy(DATA / 'tarflow_reference.json', tmp_path / 'ckpt.json')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    flow_v, params_v = tarflow.load(path, scan=flow.scan)
  assert flow_v.prior_var and np.array_equal(params_v['var'], var)
  x, y = nhwc(ref['x']), ref['y'].astype(np.int32)
  forward = lambda f, v, x: f.apply(v, x, y)
  inverse = lambda f, v, z: f.apply(v, z, y, method=ForwardFlow.inverse)
  forward, inverse = (jax.jit(fn, static_argnums=0) for fn in (forward, inverse))
  z_v, logdet_v, trajectory_v = forward(flow_v, {'params': params_v}, x)
  z, logdet, trajectory = forward(flow, variables, x)  # TARFlow's blocks, no prior
  # TARFlow's log-likelihood under its prior N(0, diag var), in float64 from its z.
  z64, var64 = np.asarray(z, np.float64), var.astype(np.float64)
  tarflow_logp = (-0.5 * np.sum(z64 ** 2 / var64 + np.log(2 * np.pi * var64), axis=(1, 2))
                  + np.asarray(logdet, np.float64))
  ours = -np.asarray(gaussian_nll(z_v, logdet_v), np.float64)
  np.testing.assert_allclose(ours, tarflow_logp, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(z_v) * np.sqrt(var), z, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(trajectory_v[-1], z_v)  # G starts from the whitened z
  for a, b in zip(trajectory_v[:-1], trajectory[:-1]):
    np.testing.assert_array_equal(a, b)
  # Samples: TARFlow's reverse scales the noise by sqrt(var) before the blocks.
  eps = ref['noise']
  ours = inverse(flow_v, {'params': params_v}, eps)
  theirs = inverse(flow, variables, eps * np.sqrt(var))
  np.testing.assert_array_equal(ours, theirs)
  # var is a buffer: no gradient reaches it, so training never moves it.
  nll = lambda p: jnp.sum(gaussian_nll(*flow_v.apply({'params': p}, x, y)[:2]))
  grads = jax.jit(jax.grad(nll))(params_v)
  assert np.all(np.asarray(grads['var']) == 0)
  first = grads['blocks'] if flow.scan else grads['blocks_0']
  assert float(jnp.max(jnp.abs(first['proj_out']['bias']))) > 0
  # And it goes back out exactly.
  np.testing.assert_array_equal(tarflow.export_state_dict(flow_v, params_v)['var'], var)


def test_export_gives_back_the_tarflow_state_dict_exactly(loaded):
  """Import then export: every tensor and buffer of TARFlow's own state dict, bit for bit."""
  flow, variables, ref = loaded
  original = reference_state(ref)
  exported = tarflow.export_state_dict(flow, variables['params'])
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].shape == value.shape, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  meta = json.loads((DATA / 'tarflow_reference.json').read_text())
  args = tarflow.tarflow_args(flow)
  assert {k: args[k] for k in meta} == meta | {'nvp': True}
  assert args['clip'] is None


def test_incomplete_and_volume_preserving_state_dicts_are_clear_errors(loaded):
  _, _, ref = loaded
  state = reference_state(ref)
  del state['blocks.2.attn_blocks.1.mlp.main.0.bias']
  with pytest.raises(ValueError, match=r'lacks blocks\.2\.attn_blocks\.1\.mlp\.main\.0\.bias') as e:
    tarflow.infer_shapes(state)
  assert 'the file is incomplete' in str(e.value)
  state = reference_state(ref)
  state['blocks.0.proj_out.weight'] = state['blocks.0.proj_out.weight'][:4]
  with pytest.raises(ValueError, match='volume-preserving'):
    tarflow.infer_shapes(state)


# ------------------------------------------------------- configs of public checkpoints

def tarflow_param_count(image: int, patch: int, width: int, blocks: int, layers: int,
                        classes: int, in_channels: int = 3, expansion: int = 4) -> int:
  """Parameters of TARFlow's transformer_flow.Model, counted from its module definitions."""
  d, t, h = patch * patch * in_channels, (image // patch) ** 2, expansion * width
  layer = (2 * width + 3 * width * width + 3 * width + width * width + width  # LN, qkv, proj
           + 2 * width + h * width + h + width * h + width)                   # LN, MLP
  block = d * width + width + t * width + classes * width + layers * layer + width * 2 * d + 2 * d
  return blocks * block


# config, variant -> (the checkpoint's P-Ch-T-K as its file name states, image, classes, F's count)
PUBLIC = {
    ('tarflow_afhq256', ()): ((8, 768, 8, 8), 256, 3, 463_481_856),
    ('tarflow_imagenet64', ()): ((4, 1024, 8, 8), 64, 1000, 817_636_096),
    ('tarflow_imagenet64', ('cond_p2',)): ((2, 768, 8, 8), 64, 1000, 466_286_784),
    ('tarflow_imagenet64', ('uncond',)): ((2, 768, 8, 8), 64, 0, 460_142_784),
}


@pytest.mark.parametrize('name,args', list(PUBLIC))
def test_public_checkpoint_configs_build_with_their_parameter_counts(name, args):
  (patch, width, blocks, layers), image, classes, count = PUBLIC[name, args]
  config = load_config(name, *args)
  config.model.init_from = 'checkpoint.pth'  # required by reverse_only; nothing is read
  config_lib.validate(config)
  assert [p.name for p in phases.build_phase_plan(config)] == ['reverse']
  m = config.model
  assert (m.patch_size, m.channels, m.num_blocks, m.layers_per_block) == (
      patch, width, blocks, layers)
  assert (m.image_size, m.num_classes, m.channels // m.num_heads, m.clip) == (
      image, classes, 64, None)
  models = build_models(config)
  flow, generator = models.flow, models.generator
  y = jnp.zeros((1,), jnp.int32) if classes else None
  x = jnp.zeros((1,) + flow.image_shape)
  f = jax.eval_shape(lambda: flow.init(jax.random.PRNGKey(0), x, y))
  z = jnp.zeros((1, flow.num_tokens, flow.token_dim))
  g = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), z, y, jnp.zeros((1,))))
  n_f = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(f))
  n_g = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(g))
  assert n_f == count == tarflow_param_count(image, patch, width, blocks, layers, classes)
  assert 0.8 * n_f < n_g < 1.05 * n_f, (n_f, n_g)  # G about F's size
  if name == 'tarflow_afhq256':
    # TARFlow's state dict also holds buffers (a causal mask per block, the prior var):
    # 472.07M elements, the "472M" quoted for this checkpoint.
    shapes = tarflow.Shapes(blocks, layers, width, patch * patch * 3, (image // patch) ** 2,
                            classes, 4, None)
    assert sum(int(np.prod(s)) for s in tarflow.expected_shapes(shapes).values()) == 472_067_072
