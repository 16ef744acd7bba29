"""Networks the training step uses but never trains: the VAE decoder and perceptual nets.

Latent runs (data.source='latents') need the SD VAE decoder to turn latents back into
images, for sample grids and for perceptual losses on G's output. Perceptual terms
(LPIPS-VGG, ConvNeXt-V2) compare G's decoded image with the decoded clean target.
Their weights come from files named in the config and travel into the jitted step as
an argument (`frozen_params`), never as baked-in constants, and are not checkpointed:
they are inputs of the experiment, like the data.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from biflow_jax.models import layers

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
  return float(p.lpips_weight) > 0 or float(p.convnext_weight) > 0


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
  params: dict[str, Any] = {}
  vae = None
  if needs_vae:
    from biflow_jax.convert import vae as vae_convert  # pylint: disable=g-import-not-at-top
    vae, vae_params = vae_convert.load(config.vae)
    params['vae'] = {k: v for k, v in vae_params.items() if k in VAE_DECODER_PARTS}
  terms = []
  if with_perceptual:
    from biflow_jax import perceptual  # pylint: disable=g-import-not-at-top
    params['perceptual'] = {}
    for term in perceptual.load_terms(config.perceptual):
      terms.append((term.name, term.weight, term.distance))
      params['perceptual'][term.name] = term.params
  nets = FrozenNets(vae, float(config.vae.scaling_factor), tuple(terms))
  return nets, params


def to_images(nets: FrozenNets | None, params: dict, x: Array) -> Array:
  """Model-space NHWC x -> images in about [-1, 1]: VAE-decoded latents, or x itself."""
  if nets is None or nets.vae is None:
    return x
  from biflow_jax.models.vae import AutoencoderKL  # pylint: disable=g-import-not-at-top
  return nets.vae.apply({'params': params['vae']}, x / nets.scaling_factor,
                        method=AutoencoderKL.decode)


def _rgb(images: Array) -> Array:
  """Feature nets expect RGB: a grey image is repeated over three channels."""
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def perceptual_terms(nets: FrozenNets | None, params: dict, patch_size: int,
                     image_shape: tuple[int, int, int]):
  """(decode, terms) for `objectives.reverse_loss`: decode maps G's tokens to images once,
  each term compares decoded output and target with its frozen net."""
  if nets is None or not nets.terms:
    return None, ()

  def decode(tokens: Array) -> Array:
    x = layers.unpatchify(tokens, image_shape, patch_size)
    return _rgb(to_images(nets, params, x).astype(jnp.float32))

  terms = tuple((name, _bind(distance, params['perceptual'][name]), weight)
                for name, weight, distance in nets.terms)
  return decode, terms


def _bind(distance, term_params):
  return lambda image, target: distance(term_params, image, target)


def abstract(config) -> tuple[FrozenNets | None, dict]:
  """Like `load`, with ShapeDtypeStructs instead of weights (no files): for jax.eval_shape,
  lowering the full train step, and FLOP counts on any machine."""
  import functools  # pylint: disable=g-import-not-at-top
  needs_vae = uses_latents(config)
  if not needs_vae and not perceptual_enabled(config):
    return None, {}
  rng = jax.random.PRNGKey(0)
  params: dict[str, Any] = {}
  vae = None
  if needs_vae:
    from biflow_jax.models.vae import AutoencoderKL  # pylint: disable=g-import-not-at-top
    vae = AutoencoderKL.from_config(config.vae)
    side = int(config.vae.image_size)
    shapes = jax.eval_shape(vae.init, rng, jnp.zeros((1, side, side, vae.in_channels)))['params']
    params['vae'] = {k: v for k, v in shapes.items() if k in VAE_DECODER_PARTS}
  terms = []
  p = config.perceptual
  if perceptual_enabled(config):
    from biflow_jax import perceptual  # pylint: disable=g-import-not-at-top
    params['perceptual'] = {}
    if float(p.lpips_weight) > 0:
      model = perceptual.LPIPS()
      x = jnp.zeros((1, 64, 64, 3))
      params['perceptual']['lpips'] = jax.eval_shape(model.init, rng, x, x)['params']
      terms.append(('lpips', float(p.lpips_weight), functools.partial(perceptual.lpips_distance, model)))
    if float(p.convnext_weight) > 0:
      model = perceptual.convnext_model(p.convnext_variant)
      x = jnp.zeros((1, int(p.convnext_resize), int(p.convnext_resize), 3))
      params['perceptual']['convnext'] = jax.eval_shape(model.init, rng, x)['params']
      terms.append(('convnext', float(p.convnext_weight),
                    functools.partial(perceptual.convnext_distance, model,
                                      resize=int(p.convnext_resize))))
  return FrozenNets(vae, float(config.vae.scaling_factor), tuple(terms)), params
