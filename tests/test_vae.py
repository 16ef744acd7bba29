"""SD VAE: parity with diffusers AutoencoderKL (tests/testdata/sd_vae_reference.*), importer
checks, the numpy safetensors reader, and the full-size model's shape and size."""
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from biflow_jax import config_lib
from biflow_jax.convert import vae as convert_vae
from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models.vae import AutoencoderKL, downsample_factor, scale_latents, unscale_latents

DATA = Path(__file__).parent / 'testdata'
REF = DATA / 'sd_vae_reference.npz'
ATOL = 1e-4
# diffusers AutoencoderKL with block_out_channels (128, 256, 512, 512): the SD VAE.
SD_VAE_PARAMS = 83_653_863


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def ref_config(**overrides) -> ml_collections.ConfigDict:
  spec = json.loads((DATA / 'sd_vae_reference.json').read_text())
  cfg = ml_collections.ConfigDict(dict(
      weights=str(REF), in_channels=spec['in_channels'],
      block_out_channels=tuple(spec['block_out_channels']),
      layers_per_block=spec['layers_per_block'], latent_channels=spec['latent_channels'],
      norm_num_groups=spec['norm_num_groups'], scaling_factor=spec['scaling_factor'],
      image_size=spec['sample_size'], dtype='float32', precision='highest'))
  cfg.update(overrides)
  return cfg


def ref_state() -> dict[str, np.ndarray]:
  return read_state_dict(REF)


def assert_trees_equal(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


@pytest.fixture(scope='module')
def loaded():
  model, params = convert_vae.load(ref_config())
  return model, params, np.load(REF)


@pytest.fixture(scope='module')
def encoded(loaded):
  model, params, ref = loaded
  mean, logvar = model.apply({'params': params}, nhwc(ref['x']), method=AutoencoderKL.encode)
  return np.asarray(mean), np.asarray(logvar)


def test_encode_parity(loaded, encoded):
  _, _, ref = loaded
  mean, logvar = encoded
  assert mean.shape == logvar.shape == (2, 8, 8, 4) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, nhwc(ref['latent_mean']), atol=ATOL, rtol=0)
  np.testing.assert_allclose(logvar, nhwc(ref['latent_logvar']), atol=ATOL, rtol=0)


def test_decode_parity(loaded):
  model, params, ref = loaded
  image = model.apply({'params': params}, nhwc(ref['latent_mean']), method=AutoencoderKL.decode)
  assert image.shape == (2, 32, 32, 3) and image.dtype == jnp.float32
  np.testing.assert_allclose(image, nhwc(ref['decoded_from_mean']), atol=ATOL, rtol=0)


def test_call_decodes_the_mean(loaded, encoded):
  model, params, ref = loaded
  recon, mean, _ = model.apply({'params': params}, nhwc(ref['x']))
  np.testing.assert_allclose(mean, encoded[0], atol=1e-6)
  np.testing.assert_allclose(recon, nhwc(ref['decoded_from_mean']), atol=ATOL, rtol=0)


def test_init_tree_matches_import(loaded):
  model, params, _ = loaded
  shapes = jax.tree.map(lambda s: s.shape, convert_vae.param_shapes(model))
  assert jax.tree.map(np.shape, params) == shapes


@pytest.mark.parametrize('bias, bound', [(1e3, 20.0), (-1e3, -30.0)])
def test_logvar_is_clamped_like_diffusers(loaded, bias, bound):
  model, params, ref = loaded
  params = jax.tree.map(np.array, params)
  params['quant_conv']['bias'][model.latent_channels:] = bias
  _, logvar = model.apply({'params': params}, nhwc(ref['x']), method=AutoencoderKL.encode)
  np.testing.assert_array_equal(logvar, bound)


def test_old_attention_names_and_1x1_conv_weights(loaded, tmp_path):
  _, params, _ = loaded
  old = {}
  for key, value in ref_state().items():
    for new, legacy in (('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'),
                        ('to_out.0', 'proj_attn')):
      key = key.replace(f'.{new}.', f'.{legacy}.')
    if key.startswith('decoder.') and key.endswith(('query.weight', 'proj_attn.weight')):
      value = value[:, :, None, None]  # some old checkpoints store these as 1x1 convs
    old[key] = value
  assert 'encoder.mid_block.attentions.0.proj_attn.bias' in old
  np.savez(tmp_path / 'old.npz', **old)  # no `param/` prefix this time
  model = AutoencoderKL.from_config(ref_config())
  assert_trees_equal(convert_vae.load_vae_params(tmp_path / 'old.npz', model), params)


def test_both_attention_namings_at_once_is_an_error():
  state = ref_state()
  state['encoder.mid_block.attentions.0.query.weight'] = state[
      'encoder.mid_block.attentions.0.to_q.weight']
  with pytest.raises(ValueError, match='to_q.weight'):
    convert_vae.convert_state_dict(state, AutoencoderKL.from_config(ref_config()))


def test_wrong_shape_names_key_and_shapes():
  state = ref_state()
  key = 'decoder.up_blocks.1.resnets.0.conv1.weight'
  state[key] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"decoder\.up_blocks\.1\.resnets\.0\.conv1\.weight.*"
                     r"\(64, 64, 1, 1\).*\(64, 64, 3, 3\)"):
    convert_vae.convert_state_dict(state, AutoencoderKL.from_config(ref_config()))


def test_other_block_out_channels_names_the_config_field():
  model = AutoencoderKL.from_config(ref_config(block_out_channels=(32, 64, 128)))
  with pytest.raises(ValueError) as err:
    convert_vae.convert_state_dict(ref_state(), model)
  message = str(err.value)
  assert 'config.vae.block_out_channels=(32, 64, 128)' in message
  assert '(32, 64, 64)' in message and "VAE weight '" in message


def test_missing_key_is_named():
  state = ref_state()
  del state['encoder.mid_block.attentions.0.to_v.bias']
  with pytest.raises(ValueError, match=r'missing.*encoder\.mid_block\.attentions\.0\.to_v\.bias'):
    convert_vae.convert_state_dict(state, AutoencoderKL.from_config(ref_config()))


def test_unused_keys_are_an_error_and_name_layers_per_block():
  model = AutoencoderKL.from_config(ref_config(layers_per_block=1))
  with pytest.raises(ValueError, match=r'no place.*resnets\.2.*layers_per_block=1.*has 2'):
    convert_vae.convert_state_dict(ref_state(), model)


def test_keys_outside_the_vae_are_ignored(loaded):
  _, params, _ = loaded
  state = ref_state()
  state['loss.discriminator.main.0.weight'] = np.zeros((3,), np.float32)
  model = AutoencoderKL.from_config(ref_config())
  assert_trees_equal(convert_vae.convert_state_dict(state, model), params)


@pytest.mark.parametrize('weights', ['', '/nonexistent/sd_vae.safetensors'])
def test_missing_weights_path(weights):
  with pytest.raises(FileNotFoundError, match=r'config\.vae\.weights.*sd-vae-ft-'):
    convert_vae.load(ref_config(weights=weights))
  full = config_lib.base_config()
  full.vae.weights = weights
  with pytest.raises(FileNotFoundError, match=r'config\.vae\.weights'):
    convert_vae.load(full)


# ---- safetensors, written by hand so the format (not a library) is what is tested.

def bf16_bits(x: np.ndarray) -> np.ndarray:
  return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]],
                      metadata: dict[str, str] | None = None) -> None:
  """8-byte little-endian header size, JSON header (padded to 8 bytes), raw data."""
  header, blobs, offset = {}, [], 0
  if metadata is not None:
    header['__metadata__'] = metadata
  for name, (code, array) in tensors.items():
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': code, 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  text += b' ' * (-len(text) % 8)
  path.write_bytes(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def test_safetensors_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  f32 = rng.normal(size=(3, 5)).astype(np.float32)
  f16 = rng.normal(size=(4,)).astype(np.float16)
  bf16_values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -7e4]], np.float32)
  bf16 = bf16_values.view(np.uint32) & np.uint32(0xFFFF0000)  # exactly representable
  ints = np.arange(6, dtype=np.int64).reshape(2, 3)
  path = tmp_path / 'small.safetensors'
  write_safetensors(path, {
      'model.a.weight': ('F32', f32), 'b': ('F16', f16),
      'c': ('BF16', bf16_bits(bf16.view(np.float32))),
      'steps': ('I64', ints), 'scalar': ('F32', np.array(2.0, np.float32)),
  }, metadata={'format': 'pt'})
  out = read_state_dict(path)
  assert set(out) == {'a.weight', 'b', 'c', 'steps', 'scalar'}  # `model.` stripped as for .pth
  np.testing.assert_array_equal(out['a.weight'], f32)
  assert out['b'].dtype == np.float32
  np.testing.assert_array_equal(out['b'], f16.astype(np.float32))
  assert out['c'].dtype == np.float32 and out['c'].shape == (2, 3)
  np.testing.assert_array_equal(out['c'], bf16.view(np.float32))
  np.testing.assert_array_equal(out['c'][0], [1.0, -2.5, 3.140625])
  assert out['steps'].dtype == np.int64
  np.testing.assert_array_equal(out['steps'], ints)
  assert out['scalar'].shape == () and out['scalar'] == 2.0


def test_safetensors_checkpoint_loads_like_npz(loaded, tmp_path):
  _, params, _ = loaded
  path = tmp_path / 'diffusion_pytorch_model.safetensors'
  write_safetensors(path, {k: ('F32', v) for k, v in ref_state().items()})
  model = AutoencoderKL.from_config(ref_config())
  assert_trees_equal(convert_vae.load_vae_params(path, model), params)


def test_damaged_safetensors_is_a_clear_error(tmp_path):
  path = tmp_path / 'bad.safetensors'
  write_safetensors(path, {'w': ('F32', np.ones((4, 4), np.float32))})
  path.write_bytes(path.read_bytes()[:-8])  # truncated
  with pytest.raises(ValueError, match="'w'.*truncated"):
    read_state_dict(path)
  path.write_bytes(b'\xff' * 16)
  with pytest.raises(ValueError, match='not a safetensors file'):
    read_state_dict(path)
  path.write_bytes(b'')
  with pytest.raises(ValueError, match='not a safetensors file'):
    read_state_dict(path)


# ---- the full-size SD VAE, shapes only.

def expected_param_count(in_ch, out_ch, chans, layers, latent) -> int:
  """diffusers AutoencoderKL's parameter count, from its layer list (independent of Flax)."""
  def conv(k, cin, cout):
    return k * k * cin * cout + cout

  def norm(c):
    return 2 * c

  def resnet(cin, cout):
    skip = conv(1, cin, cout) if cin != cout else 0
    return norm(cin) + conv(3, cin, cout) + norm(cout) + conv(3, cout, cout) + skip

  def mid(c):
    return 2 * resnet(c, c) + norm(c) + 4 * (c * c + c)

  enc, prev = conv(3, in_ch, chans[0]), chans[0]
  for i, c in enumerate(chans):
    enc += sum(resnet(prev if j == 0 else c, c) for j in range(layers))
    enc += conv(3, c, c) if i < len(chans) - 1 else 0
    prev = c
  enc += mid(chans[-1]) + norm(chans[-1]) + conv(3, chans[-1], 2 * latent)
  rev = chans[::-1]
  dec, prev = conv(3, latent, rev[0]) + mid(rev[0]), rev[0]
  for i, c in enumerate(rev):
    dec += sum(resnet(prev if j == 0 else c, c) for j in range(layers + 1))
    dec += conv(3, c, c) if i < len(rev) - 1 else 0
    prev = c
  dec += norm(chans[0]) + conv(3, chans[0], out_ch)
  return enc + dec + conv(1, 2 * latent, 2 * latent) + conv(1, latent, latent)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_reference_param_count_matches_formula(loaded):
  model, params, _ = loaded
  assert count(params) == expected_param_count(3, 3, (32, 64, 64), 2, 4)
  assert count(params) == sum(v.size for v in ref_state().values())


def test_full_size_sd_vae_shapes_and_param_count():
  cfg = config_lib.base_config().vae
  model = AutoencoderKL.from_config(cfg)
  assert model.block_out_channels == (128, 256, 512, 512) and model.norm_num_groups == 32
  assert downsample_factor(model) == 8
  shapes = convert_vae.param_shapes(model)
  assert expected_param_count(3, 3, (128, 256, 512, 512), 2, 4) == SD_VAE_PARAMS
  assert count(shapes) == SD_VAE_PARAMS
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  mean, logvar = jax.eval_shape(
      lambda p, x: model.apply({'params': p}, x, method=AutoencoderKL.encode), shapes, x)
  assert mean.shape == logvar.shape == (1, 32, 32, 4)
  image = jax.eval_shape(
      lambda p, z: model.apply({'params': p}, z, method=AutoencoderKL.decode), shapes, mean)
  assert image.shape == (1, 256, 256, 3) and image.dtype == jnp.float32


def test_from_config_dtype_and_group_check():
  cfg = config_lib.base_config().vae
  cfg.dtype = 'bfloat16'
  assert AutoencoderKL.from_config(cfg).dtype == jnp.bfloat16
  assert AutoencoderKL.from_config(cfg).precision == jax.lax.Precision.HIGHEST
  cfg.precision = 'default'
  assert AutoencoderKL.from_config(cfg).precision == jax.lax.Precision.DEFAULT
  cfg.precision = 'fast'
  with pytest.raises(ValueError, match='fast'):
    AutoencoderKL.from_config(cfg)
  cfg.precision = 'highest'
  cfg.dtype = 'float8'
  with pytest.raises(ValueError, match='float8'):
    AutoencoderKL.from_config(cfg)
  with pytest.raises(ValueError, match=r'norm_num_groups=16'):
    AutoencoderKL.from_config(ref_config(block_out_channels=(32, 64, 72)))


def test_bfloat16_compute_stays_close(loaded, encoded):
  _, params, ref = loaded
  model = AutoencoderKL.from_config(ref_config(dtype='bfloat16', precision='default'))
  mean, logvar = model.apply({'params': params}, nhwc(ref['x']), method=AutoencoderKL.encode)
  assert mean.dtype == logvar.dtype == jnp.float32
  np.testing.assert_allclose(mean, encoded[0], atol=0.1)


def test_input_layout_errors(loaded):
  model, params, ref = loaded
  with pytest.raises(ValueError, match='NHWC'):
    model.apply({'params': params}, ref['x'], method=AutoencoderKL.encode)  # NCHW by mistake
  with pytest.raises(ValueError, match='4 channels'):
    model.apply({'params': params}, ref['latent_mean'], method=AutoencoderKL.decode)


def test_scaling_helpers():
  z = jnp.arange(4.0)
  np.testing.assert_allclose(unscale_latents(scale_latents(z, 0.18215), 0.18215), z, rtol=1e-6)
  np.testing.assert_allclose(scale_latents(z, 0.5), z * 0.5)
