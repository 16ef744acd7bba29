"""The paper's latent ImageNet-256 experiment at full size, abstractly: every network of
the B/2 train step (F, G, the frozen VAE decoder, LPIPS, ConvNeXt-V2-B) is built under
jax.eval_shape and the whole step is lowered by jax.jit, on CPU, without executing it."""
import pytest

from biflow_jax import config_lib
from biflow_jax.tools import step_cost
from test_configs import load_config


@pytest.fixture(scope='module')
def b2():
  return step_cost.step_cost(load_config('imagenet256', 'B'))


@pytest.mark.slow  # builds the B/2 model (~35 s); test_variants_validate_and_xl_shards_params stays
def test_b2_parameter_counts(b2):
  assert 110e6 < b2['params_forward'] < 130e6, b2    # paper: iTARFlow-B/2 ~120M
  assert 125e6 < b2['params_reverse'] < 140e6, b2    # paper: BiFlow-B/2 133M
  assert b2['params_vae_decoder'] == 49_490_199       # SD VAE decoder + post_quant_conv
  assert set(b2['params_perceptual']) == {'lpips', 'convnext'}
  assert 14e6 < b2['params_perceptual']['lpips'] < 15e6        # VGG16 convs + heads
  assert 85e6 < b2['params_perceptual']['convnext'] < 95e6     # ConvNeXt-V2-B


@pytest.mark.slow  # lowers the B/2 train step (~20 s); the variants test stays
def test_b2_train_step_lowers_with_plausible_flops(b2):
  batch, tokens = b2['batch_size'], 256
  flops = b2['train_step_flops']
  assert set(flops) == {'forward', 'reverse'}  # the two-stage plan: F, then G with F frozen
  # F's step: ~6 FLOPs per parameter per token (forward + backward) plus attention.
  rule = 6 * b2['params_forward'] * tokens * batch
  assert 0.9 * rule < flops['forward'] < 1.3 * rule, (flops, rule)
  # G's step decodes G's output (with backward) and the target through the VAE.
  assert flops['reverse'] > 3 * batch * b2['sample_flops_vae_decode']
  # One sample: G once (1 NFE), far cheaper than the VAE decoder that follows it.
  assert b2['sample_flops_G'] < 2 * b2['params_reverse'] * tokens
  assert b2['sample_flops_vae_decode'] > 5 * b2['sample_flops_G']
  chips = b2['estimates']
  assert all(v > 0 for chip in chips.values() for v in chip.values())


def test_variants_validate_and_xl_shards_params():
  for size in ('S', 'B', 'XL'):
    config_lib.validate(load_config('imagenet256', size))
  xl = load_config('imagenet256', 'XL')
  assert xl.mesh.param_sharding == 'fsdp' and xl.mesh.fsdp == -1
  assert xl.reverse.size == 'XL'
