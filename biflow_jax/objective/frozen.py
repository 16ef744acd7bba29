"""Networks the training step uses but never trains: the VAE decoder and perceptual nets.

Latent runs (data.source='latents') need the SD VAE decoder to turn latents back into
images, for sample grids and for perceptual losses on G's output. Perceptual terms
(LPIPS-VGG, ConvNeXt-V2) compare G's decoded image with the decoded clean target.
Their numerics (matmul/conv precision and compute dtype) are config.perceptual.precision /
.dtype for the loss nets and config.vae.precision / .dtype for the VAE: HIGHEST and
float32 unless a config chooses (the accelerator configs choose 'default' and bfloat16).
Their weights come from files named in the config and travel into the jitted step as
an argument (`frozen_params`), never as baked-in constants, and are not checkpointed:
they are inputs of the experiment, like the data.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from biflow_jax import assets
from biflow_jax.convert import vae as vae_convert
from biflow_jax.models.vae import AutoencoderKL
from biflow_jax.objective import feature_term, perceptual

Array = jax.Array

# Parts of the VAE the decoder needs; the encoder stays on the host (it only built the cache).
VAE_DECODER_PARTS = ('decoder', 'post_quant_conv')


class FrozenNets(NamedTuple):
  vae: Any                # AutoencoderKL, or None for pixel-space data
  scaling_factor: float   # F and G see latents * scaling_factor
  terms: tuple[tuple[str, float, Callable[[Any, Array, Array], Array]], ...]  # (name, weight, distance)


def uses_latents(config) -> bool:
  return config.data.source == 'latents'


def perceptual_enabled(config) -> bool:
  p = config.perceptual
  return (float(p.lpips_weight) > 0 or float(p.convnext_weight) > 0
          or float(p.get('feature_weight', 0.0) or 0.0) > 0)


def decoded_image_shape(config) -> tuple[int, int, int]:
  """(H, W, C) of the images G's output decodes to: the VAE's for latents, else the model's."""
  if uses_latents(config):
    side = int(config.vae.image_size)
    return side, side, 3
  side = int(config.model.image_size)
  return side, side, int(config.model.in_channels)


def _feature_term(config, module, params) -> perceptual.PerceptualTerm:
  shape = decoded_image_shape(config)
  precision, dtype = perceptual.numerics(config.perceptual)
  module = module.clone(precision=precision, dtype=dtype)
  return perceptual.PerceptualTerm('features', float(config.perceptual.feature_weight), params,
                                   feature_term.distance_fn(module, shape))


def _assemble(config, vae, vae_params, terms) -> tuple[FrozenNets, dict]:
  """Nets and params from a VAE (or None) and perceptual terms: the step needs the
  decoder half of the VAE only (the encoder built the cache)."""
  params: dict[str, Any] = {}
  if vae is not None:
    params['vae'] = {k: v for k, v in vae_params.items() if k in VAE_DECODER_PARTS}
  if terms:
    params['perceptual'] = {t.name: t.params for t in terms}
  nets = FrozenNets(vae, float(config.vae.scaling_factor),
                    tuple((t.name, t.weight, t.distance) for t in terms))
  return nets, params


def load(config, with_perceptual: bool = True) -> tuple[FrozenNets | None, dict]:
  """(nets, params) for this config; (None, {}) when nothing frozen is needed.

  Missing weight files are FileNotFoundErrors naming the config field and how to get them,
  raised here, before any training step compiles. `with_perceptual=False` loads only the
  VAE (sampling and evaluation need no loss networks).
  """
  needs_vae = uses_latents(config)
  with_perceptual = with_perceptual and perceptual_enabled(config)
  if not needs_vae and not with_perceptual:
    return None, {}
  vae, vae_params = None, None
  if needs_vae:
    vae, vae_params = vae_convert.load(config.vae)
  terms = []
  if with_perceptual:
    terms = perceptual.load_terms(config.perceptual)
    if float(config.perceptual.get('feature_weight', 0.0) or 0.0) > 0:
      module, params, _ = feature_term.load(
          config.perceptual.feature_net or assets.shipped(config, 'feature_net'),
          decoded_image_shape(config))
      terms.append(_feature_term(config, module, params))
  return _assemble(config, vae, vae_params, terms)


def to_images(nets: FrozenNets | None, params: dict, x: Array) -> Array:
  """Model-space NHWC x -> images in about [-1, 1]: VAE-decoded latents, or x itself."""
  if nets is None or nets.vae is None:
    return x
  return nets.vae.apply({'params': params['vae']}, x / nets.scaling_factor,
                        method=AutoencoderKL.decode)


def rgb(images: Array) -> Array:
  """Feature nets expect RGB: a grey image is repeated over three channels."""
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def abstract(config) -> tuple[FrozenNets | None, dict]:
  """Like `load`, with ShapeDtypeStructs instead of weights (no files): for jax.eval_shape,
  lowering the full train step, and FLOP counts on any machine."""
  needs_vae = uses_latents(config)
  if not needs_vae and not perceptual_enabled(config):
    return None, {}
  vae, vae_params = None, None
  if needs_vae:
    vae = AutoencoderKL.from_config(config.vae)
    side = int(config.vae.image_size)
    vae_params = jax.eval_shape(vae.init, jax.random.PRNGKey(0),
                                jnp.zeros((1, side, side, vae.in_channels)))['params']
  terms = []
  if perceptual_enabled(config):
    terms = perceptual.abstract_terms(config.perceptual)
    if float(config.perceptual.get('feature_weight', 0.0) or 0.0) > 0:
      terms.append(_feature_term(config, *feature_term.abstract(decoded_image_shape(config))))
  return _assemble(config, vae, vae_params, terms)
