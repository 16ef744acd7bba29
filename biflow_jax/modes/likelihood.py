"""`--mode=likelihood`: bits/dim of a user's images under a run's F, per image and summarised.

    python -m biflow_jax.main --config=configs/mnist.py --workdir=RUN --mode=likelihood \\
        --config.likelihood.input=FOLDER_OR_NPZ [--config.likelihood.label=3]

writes RUN/likelihood/<name>.csv (name, label, bits_per_dim, nll_per_dim) and
RUN/likelihood/<name>.json (the same per image, a summary and the convention).

Convention (the same as the held-out metric, `evaluation.likelihood`): 8-bit pixels k
become x = k / 127.5 - 1; F scores x~ = x + sigma * eps, sigma = objective.noise_sigma,
with one fixed noise draw per image (seed EVAL_NOISE_SEED + batch index); bits/dim =
(NLL(x~) / D + log 127.5) / log 2, D = H * W * C. With sigma > 0 this is the density of
the noised image in 8-bit units, comparable between images and runs with the same sigma,
not a lossless code length (primitives.py). The EMA weights of F are used.
"""
from __future__ import annotations

import csv
import functools
import io
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from biflow_jax.data import image_files
from biflow_jax.evaluation.likelihood import EVAL_NOISE_SEED
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.objective import biflow, frozen, primitives
from biflow_jax.runtime import files
from biflow_jax.training import restore

CONVENTION = ('bits/dim of x~ = x + sigma * eps (x = k / 127.5 - 1 for 8-bit k, sigma = '
              'objective.noise_sigma, fixed noise) under F\'s EMA weights: '
              '(NLL(x~) / D + log 127.5) / log 2, D = H * W * C')


@functools.partial(jax.jit, static_argnames=('flow', 'sigma'))
def per_image_nll(params, images: jax.Array, labels: jax.Array, rng: jax.Array, *,
                  flow: ForwardFlow, sigma: float) -> jax.Array:
  """uint8 (B, H, W, C) images, int labels (B,) (-1 = none) -> NLL of x~ in nats, (B,)."""
  batch = {'image': images, 'label': labels}
  _, x_noisy, y = biflow.noisy_inputs(batch, rng, sigma, 0.0, flow.num_classes)
  z, logdet, _ = flow.apply({'params': params}, x_noisy, y)
  return primitives.gaussian_nll(z, logdet)


def score(flow: ForwardFlow, params: Any, images: np.ndarray, labels: np.ndarray, sigma: float,
          batch: int) -> np.ndarray:
  """Per-image NLL per dimension (nats), (N,), in batches of `batch` (the last one padded).

  Raises ValueError for a label outside [0, num_classes) and not -1: inside the jitted
  scorer it would index past the class embedding and read NaN.
  """
  labels = image_files.check_user_labels(labels, flow.num_classes, 'likelihood labels')
  out = []
  for i, start in enumerate(range(0, len(images), batch)):
    x, y = images[start:start + batch], labels[start:start + batch]
    pad = batch - len(x)
    if pad:  # one compiled shape for every batch
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.full((pad,), -1, y.dtype)])
    nll = per_image_nll(params, x, y, jax.random.PRNGKey(EVAL_NOISE_SEED + i), flow=flow,
                        sigma=sigma)
    out.append(np.asarray(nll)[:batch - pad])
  return np.concatenate(out) / flow.num_dims


def summary(bits: np.ndarray) -> dict[str, float]:
  return dict(n=int(len(bits)), mean=float(np.mean(bits)), std=float(np.std(bits)),
              median=float(np.median(bits)), min=float(np.min(bits)), max=float(np.max(bits)))


def _labels(config, given: np.ndarray | None, n: int) -> np.ndarray:
  """The class each image is scored under: the file's labels (checked when read) or
  config.likelihood.label for all; -1 everywhere for an unconditional model."""
  if not config.model.num_classes:
    return np.full((n,), -1, np.int32)
  if given is not None:
    return given
  return np.full((n,), _flag_label(config), np.int32)


def _flag_label(config) -> int:
  """config.likelihood.label, checked: -1 (no class) or a class of the model."""
  return int(image_files.check_user_labels(
      np.asarray([config.likelihood.label]), config.model.num_classes,
      f'config.likelihood.label={config.likelihood.label}')[0])


def check(config: ml_collections.ConfigDict) -> None:
  """What fails before any checkpoint is read."""
  if not config.likelihood.input:
    raise ValueError('--mode=likelihood needs --config.likelihood.input=FOLDER or NPZ '
                     '(the images to score)')
  if frozen.uses_latents(config):
    raise ValueError('--mode=likelihood scores pixel images; this run models VAE latents '
                     '(data.source=latents), which it does not encode here')
  if config.likelihood.batch <= 0:
    raise ValueError(f'config.likelihood.batch={config.likelihood.batch} must be positive')
  if config.model.num_classes:
    _flag_label(config)


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> dict:
  """Scores config.likelihood.input with the latest checkpoint's F; writes CSV and JSON.

  Returns the JSON's content. Raises ValueError for a bad input (before restoring) and
  FileNotFoundError when the workdir has no checkpoint.
  """
  check(config)
  if jax.process_count() > 1:
    raise ValueError('--mode=likelihood runs in one process; start it without '
                     '--num_processes / a multi-host launcher')
  m, lk = config.model, config.likelihood
  images, given, names, skipped = image_files.read_user_images(
      lk.input, m.image_size, m.in_channels, config.data.resize, config.data.skip_bad_images,
      num_classes=m.num_classes)
  labels = _labels(config, given, len(images))
  exp, state, step = restore.restore_run(config, workdir)
  sigma = float(config.objective.noise_sigma)
  nll = score(exp.models.flow, state.ema['forward'], images, labels, sigma, int(lk.batch))
  bits = np.asarray(primitives.bits_per_dim(nll * exp.models.flow.num_dims,
                                            exp.models.flow.num_dims))
  name = lk.name or Path(str(lk.input).rstrip('/')).stem
  result = dict(input=str(lk.input), checkpoint_step=int(step), noise_sigma=sigma,
                convention=CONVENTION, summary=summary(bits), skipped=skipped,
                images=[dict(name=n, label=int(y), bits_per_dim=float(b), nll_per_dim=float(v))
                        for n, y, b, v in zip(names, labels, bits, nll)])
  out_dir = epath.Path(workdir) / 'likelihood'
  out_dir.mkdir(parents=True, exist_ok=True)
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(['name', 'label', 'bits_per_dim', 'nll_per_dim'])
  for row in result['images']:
    writer.writerow([row['name'], row['label'], f"{row['bits_per_dim']:.6f}",
                     f"{row['nll_per_dim']:.6f}"])
  files.write_text_atomic(Path(out_dir / f'{name}.csv'), text.getvalue())
  files.write_text_atomic(Path(out_dir / f'{name}.json'), files.json_text(result, f'{name}.json'))
  s = result['summary']
  logging.info('%s: %d images, bits/dim mean %.4f (std %.4f, median %.4f, min %.4f, max %.4f) '
               'at step %d, sigma %g%s -> %s', lk.input, s['n'], s['mean'], s['std'],
               s['median'], s['min'], s['max'], step, sigma,
               f', {len(skipped)} undecodable skipped' if skipped else '',
               out_dir / f'{name}.csv')
  return result
