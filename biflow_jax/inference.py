"""Inference from a run: restore, decoder policy, sample grids, model space to pixels.

Used by the training loop (periodic grids) and by the sample, eval and bench modes, none
of which import the loop.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from biflow_jax import checkpoints, config_lib, files, frozen, images, parallel, sampling
from biflow_jax.experiment import Experiment, build_experiment
from biflow_jax.train_state import TrainState

SAMPLE_SEED = 4321


# ----------------------------------------------------------------------- decoder policy

def default_denoise(config, decoder: str) -> str:
  """G trained with learned denoising outputs clean images; F's inverses need 'score'."""
  if decoder == 'reverse' and config.objective.denoise == 'learned':
    return 'none'
  return config.sample.denoise


def panel_decoders(config) -> tuple[str, ...]:
  """What a training-time grid shows: every decoder side by side once G exists."""
  if config.reverse.enabled:
    return sampling.DECODERS
  return (config.sample.decoder,)


def decoder_guidance(config, decoder: str) -> float:
  """The guidance scale a decoder samples with: G's (sample.reverse_guidance) or F's."""
  return config_lib.reverse_guidance(config) if decoder == 'reverse' else config.sample.guidance


def decoder_temperature(config, decoder: str) -> float:
  """The noise temperature a decoder samples with: G's (sample.reverse_temperature) or F's."""
  return (config_lib.reverse_temperature(config) if decoder == 'reverse'
          else float(config.sample.temperature))


def make_samplers(config, decoders) -> dict[str, sampling.Sampler]:
  return {d: sampling.make_sampler(config, decoder=d, denoise=default_denoise(config, d))
          for d in decoders}


# --------------------------------------------------------------------------- to pixels

def pixel_decoder(exp: Experiment, frozen_params: dict | None = None):
  """Jitted samples -> images for latent runs (VAE decode); None when samples are images.

  frozen_params: the VAE weights to decode with (default the experiment's, on its mesh);
  evaluation passes `parallel.local_copy` of them so each process decodes its own share.
  """
  nets = exp.models.frozen
  if nets is None or nets.vae is None:
    return None
  weights = exp.frozen_params if frozen_params is None else frozen_params
  decode = jax.jit(lambda p, x: frozen.to_images(nets, p, x))
  return lambda x: decode(weights, x)


# ------------------------------------------------------------------------------ grids

def write_sample_grid(config, samplers: dict, params, path: epath.PathLike, num: int | None = None,
                      temperature: float | None = None, to_pixels=None) -> tuple[epath.Path, dict]:
  """One PNG with a grid per decoder, side by side, all from the same noise and labels.

  `to_pixels` maps model-space samples to images (the VAE decoder for latent runs);
  outputs hold the images, NHWC in [-1, 1]. Every process samples (the params may span
  hosts); process 0 alone writes the file.
  """
  num = num or config.sample.num
  labels = sampling.class_rows(num, config.model.num_classes)
  rows = config.model.num_classes or None
  rows = rows if rows and num % rows == 0 else None
  outputs, grids = {}, []
  for name, sampler in samplers.items():
    x = sampler(params, jax.random.PRNGKey(SAMPLE_SEED), labels,
                guidance=decoder_guidance(config, name),
                temperature=decoder_temperature(config, name) if temperature is None else temperature)
    if to_pixels is not None:
      x = to_pixels(x)
    outputs[name] = parallel.to_host(x)
    grids.append(images.make_grid(images.to_uint8(outputs[name]), rows=rows))
  if parallel.is_main_process():
    images.save_png(images.side_by_side(grids), path)
  return path, outputs


# ----------------------------------------------------------------------------- restore

def restore(config: ml_collections.ConfigDict, workdir: epath.PathLike,
            with_perceptual: bool = False) -> tuple[Experiment, TrainState, int]:
  """(experiment, state, step) from the latest checkpoint in workdir (no data iterator).

  Raises FileNotFoundError (creating nothing) when workdir has no checkpoint, and the
  errors of `checkpoints.restore` for one of another model or code version.
  """
  exp = build_experiment(config, with_perceptual=with_perceptual)
  checkpoint_dir = epath.Path(workdir) / 'checkpoints'
  if not checkpoint_dir.is_dir():  # say so without creating anything
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir}: train first '
                            '(--mode=train) or point --workdir at a run that has one')
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  try:
    state, step = checkpoints.restore(manager, exp.abstract_state)
  finally:
    manager.close()
  return exp, state, step


def sample_from_checkpoint(config, workdir: epath.PathLike, name: str | None = None) -> epath.Path:
  """`--mode=sample`: a grid (and the raw samples) from the latest checkpoint's EMA params."""
  workdir = epath.Path(workdir)
  exp, state, step = restore(config, workdir)
  s = config.sample
  w, t = decoder_guidance(config, s.decoder), decoder_temperature(config, s.decoder)
  name = name or f'{s.decoder}_w{w:g}_t{t:g}_step{step}'
  path, outputs = write_sample_grid(config, make_samplers(config, (s.decoder,)), state.ema,
                                    workdir / 'samples' / f'{name}.png',
                                    to_pixels=pixel_decoder(exp))
  if parallel.is_main_process():
    def write(tmp):
      with tmp.open('wb') as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, images=images.to_uint8(outputs[s.decoder]),
                 labels=np.asarray(sampling.class_rows(s.num, config.model.num_classes)))
    files.write_atomic(workdir / 'samples' / f'{name}.npz', write)  # never half an .npz
  logging.info('wrote %s', path)
  return path
