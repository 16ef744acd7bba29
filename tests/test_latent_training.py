"""The latent pipeline end to end at toy size: cache -> 'latents' source -> F and G with
an LPIPS term through the frozen VAE decoder -> decoded sample grid.

The VAE is the small diffusers reference (32x32x3 -> 8x8x4, tests/testdata/sd_vae_*) and
LPIPS uses the stand-in trunk + real heads (tests/testdata/lpips_vgg_*), so every frozen
weight comes from a local file, as in a real run.
"""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from biflow_jax.convert import vae as vae_convert
from biflow_jax.data import input_pipeline, latents
from biflow_jax.modes import sample
from biflow_jax.objective import biflow, frozen, phases
from biflow_jax.training import train
from biflow_jax.training.experiment import build_experiment
from test_perceptual import lpips_standin_state
from test_train import parse_config

DATA = Path(__file__).parent / 'testdata'
VAE_WEIGHTS = DATA / 'sd_vae_reference.npz'
NUM_IMAGES = 40


def lpips_weights(path: Path) -> Path:
  np.savez(path, **lpips_standin_state())
  return path


def latent_config(cache: Path, lpips_file: Path | None = None):
  c = parse_config()
  vae = json.loads((DATA / 'sd_vae_reference.json').read_text())
  c.vae.weights = str(VAE_WEIGHTS)
  c.vae.block_out_channels = tuple(vae['block_out_channels'])
  c.vae.norm_num_groups = vae['norm_num_groups']
  c.vae.image_size = 32
  c.data.source, c.data.path = 'latents', str(cache)
  c.data.train_split = c.data.heldout_split = 'train'
  c.model.image_size, c.model.in_channels, c.model.patch_size = 8, 4, 2  # 16 tokens of 16
  c.reverse.enabled = True
  c.schedule.plan, c.schedule.forward_steps, c.schedule.reverse_steps = 'two_stage', 3, 3
  c.batch_size, c.eval_batches, c.sample.num = 8, 1, 10
  c.log_every = c.checkpoint_every = c.eval_every = c.sample_every = 3
  if lpips_file is not None:
    c.perceptual.lpips_weight, c.perceptual.lpips_weights = 0.5, str(lpips_file)
  return c


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """40 bundled MNIST digits as 32x32 RGB, encoded by the reference VAE (+ mirrors)."""
  out = tmp_path_factory.mktemp('latent_cache')
  images, labels = input_pipeline.load_bundled_mnist()
  source = [{'image': images[i], 'label': int(labels[i])} for i in range(NUM_IMAGES)]
  c = latent_config(out)
  model, params = vae_convert.load(c.vae)
  latents.write_cache(source, out, latents.make_vae_encode_fn(model, params), split='train',
                      image_size=32, scaling_factor=c.vae.scaling_factor, batch_size=16,
                      examples_per_shard=16, num_threads=0)
  return out


@pytest.fixture(scope='module')
def lpips_file(tmp_path_factory):
  return lpips_weights(tmp_path_factory.mktemp('lpips') / 'lpips_standin.npz')


def test_latent_source_feeds_posterior_draws(cache):
  config = latent_config(cache)
  it = input_pipeline.create_train_iterator(config)
  batch = next(it)
  assert batch['latent_mean'].shape == (8, 8, 8, 4) and batch['label'].dtype == np.int32
  x, x_noisy, _ = biflow.prepare_inputs(batch, jax.random.PRNGKey(0), config, 10, train=True)
  expected_mean = batch['latent_mean'] * config.vae.scaling_factor
  # x is a posterior draw: centred on the scaled mean, spread by the scaled std.
  z = (np.asarray(x) - expected_mean) / (batch['latent_std'] * config.vae.scaling_factor)
  assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
  assert np.std(np.asarray(x_noisy) - np.asarray(x)) == pytest.approx(0.1, rel=0.1)


def test_missing_vae_weights_fail_before_training(cache, tmp_path):
  config = latent_config(cache)
  config.vae.weights = str(tmp_path / 'nope.safetensors')
  with pytest.raises(FileNotFoundError, match='config.vae.weights'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow  # VAE decoder + LPIPS gradient (~100 s)
def test_lpips_gradient_reaches_G_through_the_frozen_decoder(cache, lpips_file):
  config = latent_config(cache, lpips_file)
  exp = build_experiment(config)
  plan, models, frozen_params = exp.plan, exp.models, exp.frozen_params
  assert set(frozen_params['vae']) == set(frozen.VAE_DECODER_PARTS)  # no encoder in the step
  batch = next(input_pipeline.create_train_iterator(config))
  reverse_phase = phases.phase_at(plan, 3)
  assert reverse_phase.trains('reverse') and not reverse_phase.trains('forward')

  def reverse_grads(weight):
    c = config.copy_and_resolve_references()
    c.perceptual.lpips_weight = weight
    e = build_experiment(c, mesh=exp.mesh)  # weight 0: the VAE decoder alone, no term
    new, metrics = e.step(e.create_state(), e.global_batch(batch), e.frozen_params,
                          reverse_phase)
    return jax.device_get(metrics), jax.device_get(new.opt_state)  # Adam moments hold the grads

  with_lpips, moments_lpips = reverse_grads(0.5)
  without, moments_plain = reverse_grads(0.0)
  assert 'reverse/lpips' in with_lpips and 'reverse/lpips' not in without
  assert np.isfinite(with_lpips['reverse/lpips']) and with_lpips['reverse/lpips'] > 0
  assert with_lpips['loss'] > without['loss']
  # The term's own gradient w.r.t. G's output tokens, through decoder and LPIPS.
  decode, terms = biflow.perceptual_terms(models.frozen, frozen_params, 2, (8, 8, 4))
  (name, distance, weight), = terms
  assert (name, weight) == ('lpips', 0.5)
  tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16))
  target = decode(jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16)))
  grad = jax.grad(lambda t: distance(decode(t), target).sum())(tokens)
  assert np.all(np.isfinite(grad)) and float(np.abs(grad).max()) > 1e-6
  assert with_lpips['reverse/out'] == pytest.approx(without['reverse/out'], rel=1e-5)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), moments_lpips, moments_plain)
  assert max(jax.tree.leaves(moved)) > 0  # LPIPS changed G's gradient in the real step


@pytest.fixture(scope='module')
def trained_run(cache, lpips_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('latent_run')
  config = latent_config(cache, lpips_file)
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


@pytest.mark.slow  # a latent run (~50 s)
def test_latent_run_end_to_end(trained_run):
  config, workdir, state = trained_run
  assert int(state.step) == 6
  grid = Image.open(workdir / 'samples' / 'step_6.png')
  # Three decoders side by side, each a grid of VAE-decoded 32x32 RGB images.
  assert grid.mode == 'RGB' and min(grid.size) > 32
  # --mode=sample decodes the latents too: 32x32 RGB images, not 8x8x4 latents.
  path = sample.run(config, workdir, name='check')
  with np.load(path.with_suffix('.npz')) as saved:
    assert saved['images'].shape == (10, 32, 32, 3) and saved['images'].dtype == np.uint8


@pytest.mark.slow  # needs the latent run above
def test_latent_eval_scores_decoded_images(trained_run, tmp_path):
  """--mode=eval on a latent run: samples and held-out latents are decoded to pixels
  and scored by the FID InceptionV3 (stand-in weights); NLL per latent dimension."""
  from biflow_jax.modes import evaluate
  from test_inception import stand_in_state_dict
  config, workdir, _ = trained_run
  config = config.copy_and_resolve_references()
  weights = tmp_path / 'inception_standin.npz'
  np.savez(weights, **stand_in_state_dict())
  config.eval.feature_net, config.eval.inception_weights = 'inception', str(weights)
  config.eval.decoders, config.eval.num_samples, config.eval.batch = 'reverse', 8, 8
  config.eval.is_splits, config.eval.pr_k = 1, 2
  result = evaluate.run(config, workdir)
  assert np.isfinite(result['heldout_nll_per_dim_ema']) and 'heldout_bits_per_dim_ema' not in result
  entry = result['decoders']['reverse']
  assert np.isfinite(entry['frechet_distance']) and entry['frechet_distance'] > 0
  # The floor (real training latents, decoded) is closer to the reference than G's samples.
  assert result['real_train_images']['frechet_distance'] < entry['frechet_distance']
