"""`--mode=eval`: every metric for every decoder asked for -> DIR/eval.json.

- bits/dim of the held-out data under F (EMA weights);
- per decoder (G in 1 NFE, F's exact inverse, F's fixed-point inverse), on
  `eval.num_samples` class-balanced samples: a Frechet distance in the feature space
  of the chosen feature net, Inception Score, precision/recall (k-NN manifolds), and
  for class-conditional models the accuracy with which a classifier recognises the
  asked-for class;
- feature nets: the project's own dataset classifier (bundled MNIST: shipped in
  biflow_jax/data) or the FID InceptionV3 (pytorch-fid weights from a local file).

Statistics of the real data are computed once per workdir and feature net and cached
in DIR/eval_cache/.

Latent runs (data.source='latents') are scored in pixel space: samples go through the
frozen VAE decoder, and the real reference is the decoder's image of each held-out
latent's posterior mean (VAE reconstructions; the standard ImageNet FID reference
batch of real images gives somewhat different numbers). The held-out metric is then NLL
per latent dimension.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from biflow_jax import config_lib, inference, input_pipeline, sampling
from biflow_jax.evaluation import features, likelihood, metrics
from biflow_jax.evaluation.features import FeatureFn

EVAL_SEED = 2024



def decoders_to_evaluate(config) -> tuple[str, ...]:
  names = config.eval.decoders
  if not names:
    return tuple(d for d in sampling.DECODERS if config.reverse.enabled or d != 'reverse')
  decoders = tuple(d.strip() for d in names.split(',') if d.strip())
  for d in decoders:
    if d not in sampling.DECODERS:
      raise ValueError(f'config.eval.decoders: unknown decoder {d!r}; use {sampling.DECODERS}')
    if d == 'reverse' and not config.reverse.enabled:
      raise ValueError("config.eval.decoders asks for 'reverse' but config.reverse.enabled=False")
  return decoders


def real_images(config, batch: dict, to_pixels=None) -> np.ndarray:
  """Real examples as images in [-1, 1]: pixels as stored, latents decoded (posterior mean)."""
  if 'image' in batch:
    return batch['image'].astype(np.float32) / 127.5 - 1.0
  if to_pixels is None:
    raise ValueError('latent data needs the VAE decoder (config.vae.weights) to be scored')
  scale, size = float(config.vae.scaling_factor), int(config.eval.batch)
  means = batch['latent_mean']
  return np.concatenate([np.asarray(to_pixels(jnp.asarray(means[i:i + size]) * scale))
                         for i in range(0, len(means), size)])


def real_statistics(config, net_name: str, feature_fn: FeatureFn, cache_dir: Path,
                    to_pixels=None) -> dict:
  """Held-out features' (mu, sigma) and a subset for precision/recall, cached on disk."""
  path = cache_dir / f'real_{config.data.source}_{config.data.tfds_name or "default"}_{net_name}.npz'
  if path.exists():
    cached = np.load(path)
    return {k: cached[k] for k in cached.files}
  heldout = input_pipeline.load_heldout(config)
  images = real_images(config, heldout, to_pixels)
  logits, features = feature_fn(images)
  mu, sigma = metrics.feature_stats(features)
  stats = {'mu': mu, 'sigma': sigma, 'features': features.astype(np.float32),
           'labels': heldout['label'], 'logits': logits.astype(np.float32)}
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, **stats)
  tmp.replace(path)
  return stats


def generate(config, params, decoder: str, num: int, batch: int,
             to_pixels=None) -> tuple[np.ndarray, np.ndarray, float]:
  """(images in [-1, 1], labels, seconds) from `decoder`, class-balanced labels; latent
  samples are decoded by `to_pixels` (the VAE), inside the timed loop."""
  sampler = sampling.make_sampler(config, decoder, inference.default_denoise(config, decoder))
  guidance = inference.decoder_guidance(config, decoder)
  classes = config.model.num_classes
  labels = (np.arange(num) % classes).astype(np.int32) if classes else -np.ones(num, np.int32)
  out, t0 = [], time.time()
  for i, start in enumerate(range(0, num, batch)):
    y = jnp.asarray(labels[start:start + batch])
    rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), i)
    x = sampler(params, rng, y, guidance=guidance, temperature=config.sample.temperature)
    out.append(np.asarray(x if to_pixels is None else to_pixels(x)))
  return np.concatenate(out), labels, time.time() - t0


def sample_metrics(fake: np.ndarray, labels: np.ndarray, real: dict, feature_fn: FeatureFn,
                   config) -> dict:
  logits, features = feature_fn(fake)
  mu, sigma = metrics.feature_stats(features)
  is_mean, is_std = metrics.inception_score(logits, splits=int(config.eval.is_splits))
  precision, recall = metrics.precision_recall(real['features'], features, k=int(config.eval.pr_k))
  result = {'frechet_distance': metrics.frechet_distance(mu, sigma, real['mu'], real['sigma']),
            'inception_score': is_mean, 'inception_score_std': is_std,
            'precision': precision, 'recall': recall}
  if config.model.num_classes and logits.shape[-1] >= config.model.num_classes:
    result['class_accuracy'] = float(np.mean(np.argmax(logits, axis=-1) == labels))
  return result


def evaluate(config, workdir: str | Path) -> dict:
  """Every metric for every decoder asked for, from the latest checkpoint -> DIR/eval.json."""
  config_lib.validate(config)
  workdir = Path(workdir)
  decoders = decoders_to_evaluate(config)
  net_name, feature_fn = features.make_feature_fn(config)  # fails before sampling if weights miss
  exp, state, step = inference.restore(config, workdir)
  to_pixels = inference.pixel_decoder(exp)
  heldout = input_pipeline.load_heldout(config, config.eval_batches * config.batch_size)
  heldout_metrics = likelihood.heldout_metrics(exp.models.flow, state.ema['forward'], heldout,
                                               config)
  result: dict[str, Any] = {
      'step': step, 'feature_net': net_name, 'num_samples': int(config.eval.num_samples),
      'noise_sigma': float(config.objective.noise_sigma),
      'temperature': float(config.sample.temperature),
      **{f"heldout_{k.split('/')[1]}_ema": v for k, v in heldout_metrics.items()},
      'decoders': {}}
  real = real_statistics(config, net_name, feature_fn, workdir / 'eval_cache', to_pixels)
  if config.model.num_classes:
    result['real_heldout_class_accuracy'] = float(
        np.mean(np.argmax(real['logits'], axis=-1) == real['labels']))
  # The floor: training images scored exactly like samples.
  train_source = input_pipeline.load_source(config, 'train')
  train_real = train_source.gather(np.arange(min(train_source.length, int(config.eval.num_samples))))
  result['real_train_images'] = sample_metrics(
      real_images(config, train_real, to_pixels), train_real['label'], real, feature_fn, config)
  for decoder in decoders:
    fake, labels, seconds = generate(config, state.ema, decoder, int(config.eval.num_samples),
                                     int(config.eval.batch), to_pixels)
    entry = sample_metrics(fake, labels, real, feature_fn, config)
    entry['guidance'] = float(inference.decoder_guidance(config, decoder))
    entry['sampling_seconds'] = seconds
    result['decoders'][decoder] = entry
    logging.info('eval %s: %s', decoder, entry)
  (workdir / 'eval.json').write_text(json.dumps(result, indent=2))
  return result
