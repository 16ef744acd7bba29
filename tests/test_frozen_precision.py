"""The frozen nets' numerics (config.perceptual.precision/.dtype, config.vae.precision/.dtype):
validated, carried into the reverse loss's convs and matmuls, and close to float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

from biflow_jax import config_lib
from biflow_jax.objective import biflow, frozen
from biflow_jax.tools import train_classifier as tc

from test_configs import load_config

# Feature-net distance, bf16/'default' vs float32/HIGHEST on held-out MNIST: bound at about
# 3x the max relative difference test_feature_net_bfloat16_stays_close measured on CPU (1.3e-3).
REL_FEATURES = 4e-3


def _latent_config(precision: str, dtype: str):
  """A tiny latent run with every frozen net in the loss: VAE decoder, LPIPS, ConvNeXt."""
  c = config_lib.base_config()
  c.data.source = 'latents'
  c.vae.update(block_out_channels=(32, 32), norm_num_groups=8, image_size=16)
  c.model.update(image_size=8, in_channels=4, patch_size=2)
  c.perceptual.update(lpips_weight=1.0, convnext_weight=1.0, convnext_variant='atto',
                      convnext_resize=32)
  c.perceptual.update(precision=precision, dtype=dtype)
  c.vae.update(precision=precision, dtype=dtype)
  return c


def _matmuls(jaxpr) -> dict[tuple[str, str, str], int]:
  """(primitive, operand dtype, precision) -> count over every conv and dot_general."""
  seen: dict[tuple[str, str, str], int] = {}

  def walk(j):
    for e in j.eqns:
      if e.primitive.name in ('conv_general_dilated', 'dot_general'):
        precision = e.params.get('precision')
        precision = precision[0] if isinstance(precision, tuple) else precision
        key = (e.primitive.name, str(e.invars[0].aval.dtype), str(precision))
        seen[key] = seen.get(key, 0) + 1
      for value in e.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if isinstance(sub, jcore.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jcore.Jaxpr):
            walk(sub)

  walk(jaxpr.jaxpr)
  return seen


def _loss_matmuls(config):
  nets, params = frozen.abstract(config)

  def loss(p, output, target):  # what biflow.reverse_loss does with the perceptual terms
    decode, terms = biflow.perceptual_terms(nets, p, 2, (8, 8, 4))
    a, b = decode(output), decode(target)
    return sum(weight * jnp.mean(term(a, b)) for _, term, weight in terms)

  tokens = jax.ShapeDtypeStruct((2, 16, 16), jnp.float32)
  return _matmuls(jax.make_jaxpr(loss)(params, tokens, tokens))


def test_config_reaches_every_frozen_net_in_the_loss():
  exact = _loss_matmuls(_latent_config('highest', 'float32'))
  assert exact and all(dtype == 'float32' and precision == 'HIGHEST'
                       for _, dtype, precision in exact), exact
  fast = _loss_matmuls(_latent_config('default', 'bfloat16'))
  convs = {k: n for k, n in fast.items() if k[0] == 'conv_general_dilated'}
  assert set(convs) == {('conv_general_dilated', 'bfloat16', 'DEFAULT')}, fast
  assert sum(convs.values()) == sum(n for k, n in exact.items() if k[0] == 'conv_general_dilated')
  dots = {k: n for k, n in fast.items() if k[0] == 'dot_general'}
  # Every dense layer and the VAE attention go bf16; the two float32 dots left are
  # jax.image.resize's (ConvNeXt's bilinear resize to convnext_resize), not a net's.
  assert dots.pop(('dot_general', 'bfloat16', 'DEFAULT')) > 0
  assert dots == {('dot_general', 'float32', 'HIGHEST'): 2}, fast


@pytest.mark.parametrize('field, value', [('perceptual.precision', 'fastest'),
                                          ('perceptual.dtype', 'float8'),
                                          ('vae.precision', 'tf32'),
                                          ('vae.dtype', 'int8')])
def test_bad_value_is_one_error_naming_the_field_and_the_choices(field, value):
  config = config_lib.base_config()
  group, name = field.split('.')
  config[group][name] = value
  with pytest.raises(ValueError, match=rf"config\.{field}='{value}' is not one of \("):
    config_lib.validate(config)


def test_accelerator_config_chooses_fast_numerics_and_cpu_configs_keep_float32():
  fast, exact = load_config('imagenet256'), load_config('mnist')
  for c, want in ((fast, ('default', 'bfloat16')), (exact, ('highest', 'float32'))):
    assert (c.perceptual.precision, c.perceptual.dtype) == want
    assert (c.vae.precision, c.vae.dtype) == want


def test_feature_net_bfloat16_stays_close():
  config = config_lib.base_config()
  config.perceptual.feature_weight = 1.0
  _, (x, _) = tc.bundled_mnist_m11()
  a = jnp.asarray(x[:64])
  b = jnp.asarray(x[64:128])
  values = {}
  for precision, dtype in (('highest', 'float32'), ('default', 'bfloat16')):
    config.perceptual.update(precision=precision, dtype=dtype)
    nets, params = frozen.load(config)
    (name, _, distance), = nets.terms
    assert name == 'features'
    values[dtype] = np.asarray(jax.jit(distance)(params['perceptual']['features'], a, b))
  got, want = values['bfloat16'], values['float32']
  rel = np.max(np.abs(got - want) / want)
  print(f'feature net bf16/default vs f32/highest: max relative difference {rel:.2e}')
  assert got.dtype == np.float32 and rel < REL_FEATURES
