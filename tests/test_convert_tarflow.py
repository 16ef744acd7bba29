"""Parity with the PyTorch TARFlow reference vectors (tests/testdata, see its README)."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from biflow_jax.convert import tarflow
from biflow_jax.models.flow import ForwardFlow

DATA = Path(__file__).parent / 'testdata'
REF = DATA / 'tarflow_reference.npz'
ATOL = 1e-4


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def loaded():
  flow, params = tarflow.load(REF)
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
