"""Decoder policy, sample grids, model space to pixels.

Which guidance, temperature and denoiser each decoder samples with (the config's
`sample.*` fields), the side-by-side PNG grid of several decoders, and the VAE decode of
latent samples. Used by the training loop (periodic grids) and by the modes; it imports
nothing of training (restoring a run is `training/checkpoints.restore_run`).
"""
from __future__ import annotations

from typing import Any

import jax
from etils import epath

from biflow_jax.inference import sampling
from biflow_jax.objective import frozen
from biflow_jax.runtime import images, parallel

SAMPLE_SEED = 4321


# ----------------------------------------------------------------------- decoder policy

def reverse_temperature(config: Any) -> float:
  """The temperature t of the noise N(0, t^2 I) the reverse model G samples from."""
  t = config.sample.get('reverse_temperature', -1.0)
  return float(config.sample.temperature if t < 0 else t)


def reverse_guidance(config: Any) -> float:
  """The guidance scale w the reverse model G samples with."""
  w = config.sample.reverse_guidance
  return float(config.sample.guidance if w < 0 else w)


def default_denoise(config, decoder: str) -> str:
  """G trained with learned denoising outputs clean images; F's inverses need 'score'."""
  if decoder == 'reverse' and config.objective.denoise == 'learned':
    return 'none'
  return config.sample.denoise


# What each panel of a sample grid is titled (the decoder, then its w and t).
PANEL_TITLES = {'reverse': 'G (1 NFE)', 'exact': 'F exact inverse',
                'fixed_point': 'F fixed-point inverse'}


def panel_decoders(config) -> tuple[str, ...]:
  """What a training-time grid shows: every decoder side by side once G exists."""
  if config.reverse.enabled:
    return sampling.DECODERS
  return (config.sample.decoder,)


def decoder_guidance(config, decoder: str) -> float:
  """The guidance scale a decoder samples with: G's (sample.reverse_guidance) or F's."""
  return reverse_guidance(config) if decoder == 'reverse' else config.sample.guidance


def decoder_temperature(config, decoder: str) -> float:
  """The noise temperature a decoder samples with: G's (sample.reverse_temperature) or F's."""
  return (reverse_temperature(config) if decoder == 'reverse'
          else float(config.sample.temperature))


def make_samplers(config, decoders) -> dict[str, sampling.Sampler]:
  return {d: sampling.make_sampler(config, decoder=d, denoise=default_denoise(config, d))
          for d in decoders}


# --------------------------------------------------------------------------- to pixels

def pixel_decoder(nets: frozen.FrozenNets | None, frozen_params: dict):
  """Jitted samples -> images for latent runs (VAE decode); None when samples are images.

  nets, frozen_params: an experiment's `models.frozen` and the VAE weights to decode with
  (the experiment's `frozen_params`, on its mesh; evaluation passes `parallel.local_copy`
  of them so each process decodes its own share).
  """
  if nets is None or nets.vae is None:
    return None
  decode = jax.jit(lambda p, x: frozen.to_images(nets, p, x))
  return lambda x: decode(frozen_params, x)


# ------------------------------------------------------------------------------ grids

def write_sample_grid(config, samplers: dict, params, path: epath.PathLike, num: int | None = None,
                      temperature: float | None = None, to_pixels=None) -> tuple[epath.Path, dict]:
  """One PNG with a grid per decoder, side by side, each titled with its decoder, w and t
  (`PANEL_TITLES`), all from the same noise and labels.

  `to_pixels` maps model-space samples to images (the VAE decoder for latent runs);
  outputs hold the images, NHWC in [-1, 1]. Every process samples (the params may span
  hosts); process 0 alone writes the file.
  """
  num = num or config.sample.num
  labels = sampling.class_rows(num, config.model.num_classes)
  rows = config.model.num_classes or None
  rows = rows if rows and num % rows == 0 else None
  outputs, grids, titles = {}, [], []
  for name, sampler in samplers.items():
    w = decoder_guidance(config, name)
    t = decoder_temperature(config, name) if temperature is None else temperature
    x = sampler(params, jax.random.PRNGKey(SAMPLE_SEED), labels, guidance=w, temperature=t)
    if to_pixels is not None:
      x = to_pixels(x)
    outputs[name] = parallel.to_host(x)
    grids.append(images.make_grid(images.to_uint8(outputs[name]), rows=rows))
    titles.append(f'{PANEL_TITLES.get(name, name)}, w {w:g}, t {float(t):g}')
  if parallel.is_main_process():
    images.save_png(images.side_by_side(grids, titles=titles), path)
  return path, outputs
