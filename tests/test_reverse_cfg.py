"""G guided in two passes (sample.reverse_cfg='two_pass'): ordinary 2-NFE CFG for a G
trained without training-time CFG, against the formula and its w = 0 case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax import config_lib
from biflow_jax.inference import sampling
from biflow_jax.models import layers
from biflow_jax.models.generator import ReverseModel

from test_generator import perturb
from test_train import parse_config


def g_config(*overrides):
  return parse_config('--config.reverse.enabled=True', '--config.reverse.width=32',
                      '--config.reverse.num_heads=2', *overrides)


@pytest.fixture(scope='module')
def setup():
  config = g_config()
  model = ReverseModel.from_config(config.reverse, config.model)
  num_tokens = (config.model.image_size // config.model.patch_size) ** 2
  token_dim = config.model.patch_size ** 2 * config.model.in_channels
  z = jax.random.normal(jax.random.key(0), (4, num_tokens, token_dim))
  y = jnp.array([0, 3, 7, 9], jnp.int32)
  g = model.init(jax.random.key(1), z, y, jnp.zeros((4,)))['params']
  params = {'reverse': perturb(g), 'forward': {}}  # only G runs for the 'reverse' decoder
  return config, model, params, z, y


def g_image(config, model, params, z, labels):
  tokens, _ = model.apply({'params': params['reverse']}, z, labels, jnp.zeros((z.shape[0],)))
  return jnp.clip(layers.unpatchify(tokens, (28, 28, 1), config.model.patch_size), -1.0, 1.0)


def test_two_pass_at_w0_is_the_conditional_pass(setup):
  config, model, params, z, y = setup
  two_pass = sampling.make_decoder(g_config('--config.sample.reverse_cfg=two_pass'),
                                   'reverse', 'none')
  one_pass = sampling.make_decoder(config, 'reverse', 'none')
  np.testing.assert_allclose(two_pass(params, z, y, 0.0), g_image(config, model, params, z, y),
                             atol=1e-6)
  np.testing.assert_allclose(one_pass(params, z, y, 0.0), two_pass(params, z, y, 0.0), atol=1e-6)


def test_two_pass_is_cond_plus_w_times_cond_minus_uncond(setup):
  config, model, params, z, y = setup
  w = 1.5
  decode = sampling.make_decoder(g_config('--config.sample.reverse_cfg=two_pass'), 'reverse',
                                 'none')
  run = lambda labels: model.apply({'params': params['reverse']}, z, labels,
                                   jnp.zeros((4,)))[0]
  cond, uncond = run(y), run(jnp.full_like(y, -1))
  assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-3  # the label matters, so the test bites
  expected = layers.unpatchify(cond + w * (cond - uncond), (28, 28, 1), config.model.patch_size)
  np.testing.assert_allclose(decode(params, z, y, w), jnp.clip(expected, -1.0, 1.0), atol=1e-5)
  # 1-NFE guidance (w as G's input) is another thing entirely.
  one_pass = sampling.make_decoder(config, 'reverse', 'none')
  assert float(jnp.max(jnp.abs(one_pass(params, z, y, w) - decode(params, z, y, w)))) > 1e-3


def test_config_checks():
  # Two passes need no training-time CFG: w above cfg_w_max is allowed ...
  config_lib.validate(g_config('--config.sample.reverse_cfg=two_pass',
                               '--config.sample.reverse_guidance=2.0'))
  # ... but a G with no unconditional mode cannot be guided that way.
  with pytest.raises(ValueError, match='label_drop_prob > 0'):
    config_lib.validate(g_config('--config.sample.reverse_cfg=two_pass',
                                 '--config.sample.reverse_guidance=2.0',
                                 '--config.objective.label_drop_prob=0.0'))
  with pytest.raises(ValueError, match="reverse_cfg='two_pass'"):
    config_lib.validate(g_config('--config.sample.reverse_guidance=2.0'))
  with pytest.raises(ValueError, match='reverse_cfg'):
    config_lib.validate(g_config('--config.sample.reverse_cfg=twice'))


def test_training_cfg_on_part_of_the_batch_equals_the_full_two_passes(setup):
  """objective.cfg_guided_fraction: with w zeroed beyond the first k rows, the
  unconditional pass on those k rows alone gives the full combination, projections too."""
  from biflow_jax.objective import biflow
  config, model, params, z, y = setup
  w = jnp.array([1.5, 0.7, 0.0, 0.0])
  full = biflow.generator_outputs(model, params['reverse'], z, y, w, True)
  part = biflow.generator_outputs(model, params['reverse'], z, y, w, True, guided_rows=2)
  cond = biflow.generator_outputs(model, params['reverse'], z, y, w, False)
  assert float(jnp.max(jnp.abs(full[0][:2] - cond[0][:2]))) > 1e-3  # guidance bites
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(part)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  assert biflow.cfg_guided_rows(64, g_config('--config.objective.cfg_guided_fraction=0.5')) == 32
  assert biflow.cfg_guided_rows(64, config) == 64
  with pytest.raises(ValueError, match='cfg_guided_fraction=0.0 must be in'):
    config_lib.validate(g_config('--config.objective.cfg_guided_fraction=0.0'))
