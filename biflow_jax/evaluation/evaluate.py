"""`--mode=eval`: every metric for every decoder asked for -> DIR/eval.json.

- bits/dim of the held-out data under F (EMA weights);
- per decoder (G in 1 NFE, F's exact inverse, F's fixed-point inverse), on
  `eval.num_samples` class-balanced samples, and for a floor row of real training
  images scored the same way, one of two protocols:
  - against the held-out split (default): a Frechet distance in the feature space of the
    chosen feature net (the project's dataset classifier, shipped for bundled MNIST, or
    the FID InceptionV3), Inception Score, precision/recall (k-NN manifolds) and, for
    class-conditional models, the accuracy with which the classifier recognises the
    asked-for class;
  - against an ADM-suite reference batch (`eval.reference=PATH`): FID, sFID, Inception
    Score and precision/recall as that suite computes them (`evaluation.adm`), with the
    FID InceptionV3, so numbers compare with papers' FID-50K.

Images are generated, featurised and accumulated batch by batch (`eval.batch`), so
50,000 samples never sit in memory; progress and ETA are logged, and with
`eval.save_samples` each decoder's samples are also written as an .npz in the suite's
format (DIR/eval_samples/), which the suite itself can score.

Every subset of stored data is class-balanced or a fixed random permutation
(`input_pipeline.subset`), never the first examples of ordered storage, and eval.json
records how each set was taken ('protocol'). Real-data statistics are cached in
DIR/eval_cache/ under a fingerprint of everything they depend on (feature-net weights by
hash, data source and location, split, example count, geometry, VAE for latents, the
reference file's hash); any change recomputes them and the log says which input changed.

Latent runs (data.source='latents') are scored in pixel space: samples go through the
frozen VAE decoder. Without a reference file the real side is the decoder's image of
each held-out latent's posterior mean (VAE reconstructions, which no paper uses); with
one it is the suite's reference batch. The held-out metric is then NLL per latent
dimension.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from biflow_jax import config_lib, files, frozen, images, inference, input_pipeline, sampling
from biflow_jax.evaluation import adm, cache, features, likelihood, metrics, npz_stream
from biflow_jax.evaluation import fingerprint as fp
from biflow_jax.evaluation import reference as reference_lib
from biflow_jax.evaluation.features import FeatureNet
from biflow_jax.evaluation.progress import Progress

EVAL_SEED = 2024
# Bumped whenever what real_statistics stores changes, so old entries are not reused.
REAL_STATS_VERSION = 2
SAMPLES_DIR = 'eval_samples'

Batches = Iterator[tuple[np.ndarray, np.ndarray]]  # (images in [-1, 1] NHWC, labels)


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


def pixel_side(config) -> int:
  """Side in pixels of the images scored: the model's, or the VAE decoder's output for
  latents (x2 per up block after the first)."""
  side = int(config.model.image_size)
  if frozen.uses_latents(config):
    side *= 2 ** (len(config.vae.block_out_channels) - 1)
  return side


def floor_count(config) -> int:
  """Real training images in the floor row: eval.floor_samples, -1 = eval.num_samples."""
  n = int(config.eval.floor_samples)
  return int(config.eval.num_samples) if n < 0 else n


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


# ------------------------------------------------------------------------ image streams


def sample_batches(config, params, decoder: str, num: int, batch: int,
                   to_pixels=None) -> Batches:
  """`num` samples from `decoder`, `batch` at a time: (images in [-1, 1] float32, labels).

  Sample i asks for class i mod num_classes; batch j draws its noise from
  fold_in(PRNGKey(EVAL_SEED), j). Latent samples are decoded by `to_pixels` (the VAE).
  """
  sampler = sampling.make_sampler(config, decoder, inference.default_denoise(config, decoder))
  guidance = inference.decoder_guidance(config, decoder)
  classes = config.model.num_classes
  labels = (np.arange(num) % classes).astype(np.int32) if classes else -np.ones(num, np.int32)
  for i, start in enumerate(range(0, num, batch)):
    y = labels[start:start + batch]
    rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), i)
    x = sampler(params, rng, jnp.asarray(y), guidance=guidance,
                temperature=config.sample.temperature)
    yield np.asarray(x if to_pixels is None else to_pixels(x), np.float32), y


class RealBatches:
  """The floor's real images, `batch` at a time, from `input_pipeline.subset`; `record()`
  describes the subset with the class counts of what was read."""

  def __init__(self, config, part: str, num: int, batch: int, to_pixels=None):
    self.config, self.batch, self.to_pixels = config, int(batch), to_pixels
    self.source = input_pipeline.load_source(config, part)
    self.subset = input_pipeline.subset(config, part, self.source, num)
    self._labels: list[np.ndarray] = []

  def __len__(self) -> int:
    return int(self.subset.indices.size)

  def __iter__(self) -> Batches:
    idx = self.subset.indices
    for start in range(0, idx.size, self.batch):
      examples = self.source.gather(idx[start:start + self.batch])
      self._labels.append(examples['label'])
      yield real_images(self.config, examples, self.to_pixels), examples['label']

  def record(self) -> dict:
    labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int32)
    return self.subset.describe(labels, self.config.model.num_classes)


class Timed:
  """Wraps a batch stream, counting the seconds spent producing its batches."""

  def __init__(self, batches):
    self.batches, self.seconds = batches, 0.0

  def __iter__(self) -> Batches:
    it = iter(self.batches)
    while True:
      t0 = time.perf_counter()
      try:
        item = next(it)
      except StopIteration:
        return
      self.seconds += time.perf_counter() - t0
      yield item


def rgb_uint8(images_m11: np.ndarray) -> np.ndarray:
  """[-1, 1] NHWC -> uint8 RGB (grey repeated), as the suite's .npz stores images."""
  out = images.to_uint8(images_m11)
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def consume(batches: Batches, score_batch, what: str, total: int,
            samples_path: Path | None = None) -> dict:
  """Feeds every (images, labels) batch to `score_batch`, logging progress; with
  `samples_path`, also writes them as the suite's .npz (arr_0 uint8 RGB, arr_1 labels)."""
  progress = Progress(what, total)
  writer = None
  labels_seen = []
  try:
    for x, y in batches:
      if samples_path is not None:
        if writer is None:
          writer = npz_stream.NpzWriter(samples_path, (total,) + x.shape[1:3] + (3,), np.uint8)
        writer.append(rgb_uint8(x))
        labels_seen.append(np.asarray(y))
      score_batch(x, np.asarray(y))
      progress.update(x.shape[0])
    if writer is not None:
      writer.extra['arr_1'] = np.concatenate(labels_seen).astype(np.int64)
      writer.close()
      writer = None
  finally:
    if writer is not None:
      writer.abort()
  return {'seconds': progress.seconds(), 'per_second': progress.done / max(progress.seconds(), 1e-9)}


# ----------------------------------------------------- protocol 1: the held-out split


def real_statistics(config, net: FeatureNet, cache_dir: Path,
                    to_pixels=None) -> tuple[dict, dict]:
  """(stats, cache record): the held-out features' (mu, sigma), features (precision/recall),
  logits and labels, from DIR/eval_cache when its fingerprint matches, else recomputed.

  The fingerprint: the feature net's (weights by hash), the held-out data's
  (`fingerprint.data_fingerprint`) and the subset taken (all of it, `input_pipeline.subset`).
  """
  key = {'what': 'real held-out reference statistics', 'version': REAL_STATS_VERSION,
         'feature_net': net.fingerprint, 'data': fp.data_fingerprint(config, 'heldout'),
         'subset': {'num_examples': 'all', 'seed': input_pipeline.SUBSET_SEED}}

  def compute():
    heldout, subset = input_pipeline.take_subset(config, 'heldout')
    logits, feats = net.fn(real_images(config, heldout, to_pixels))
    mu, sigma = metrics.feature_stats(feats)
    arrays = {'mu': mu, 'sigma': sigma, 'features': feats.astype(np.float32),
              'labels': heldout['label'], 'logits': logits.astype(np.float32)}
    return arrays, {'subset': subset}

  return cache.load_or_compute(cache_dir, 'real', key, compute)


def feature_metrics(logits: np.ndarray, feats: np.ndarray, labels: np.ndarray, real: dict,
                    config) -> dict:
  """Frechet distance, IS, precision/recall and class accuracy of featurised images
  against the held-out statistics `real`."""
  mu, sigma = metrics.feature_stats(feats)
  is_mean, is_std = metrics.inception_score(logits, splits=int(config.eval.is_splits))
  precision, recall = metrics.precision_recall(real['features'], feats, k=int(config.eval.pr_k))
  result = {'frechet_distance': metrics.frechet_distance(mu, sigma, real['mu'], real['sigma']),
            'inception_score': is_mean, 'inception_score_std': is_std,
            'precision': precision, 'recall': recall}
  if config.model.num_classes and logits.shape[-1] >= config.model.num_classes:
    result['class_accuracy'] = float(np.mean(np.argmax(logits, axis=-1) == labels))
  return result


def score_against_heldout(batches: Batches, net: FeatureNet, real: dict, config, what: str,
                          total: int, samples_path: Path | None = None) -> dict:
  """Featurises a stream of images and scores it with `feature_metrics` (features, not
  images, are kept)."""
  parts: dict[str, list[np.ndarray]] = {'logits': [], 'features': [], 'labels': []}

  def score_batch(x, y):
    logits, feats = net.fn(x)
    parts['logits'].append(np.asarray(logits))
    parts['features'].append(np.asarray(feats))
    parts['labels'].append(y)

  consume(batches, score_batch, what, total, samples_path)
  return feature_metrics(*(np.concatenate(parts[k]) for k in ('logits', 'features', 'labels')),
                         real, config)


# ------------------------------------------------ protocol 2: an ADM reference batch


def score_against_reference(batches: Batches, net: adm.SuiteNet, ref: adm.ReferenceStats,
                            config, what: str, total: int,
                            samples_path: Path | None = None) -> dict:
  """Quantises a stream of images to uint8 (as the suite's .npz would hold them),
  featurises it with the FID Inception and scores it as the suite does."""
  acc = adm.SuiteAccumulator(net.dims)
  consume(batches, lambda x, y: acc.update(net.fn(rgb_uint8(x))), what, total, samples_path)
  return adm.suite_scores(acc, ref, k=int(config.eval.pr_k))


# ------------------------------------------------------------------------------- eval


def sample_protocol(config, num: int) -> dict:
  """How generated samples are drawn (eval.json 'protocol.samples')."""
  classes = int(config.model.num_classes)
  return {'num_samples': int(num), 'seed': EVAL_SEED, 'batch': int(config.eval.batch),
          'labels': (f'class-balanced: sample i asks for class i mod {classes}' if classes
                     else 'unconditional'),
          'temperature': float(config.sample.temperature)}


def evaluate(config, workdir: str | Path) -> dict:
  """Every metric for every decoder asked for, from the latest checkpoint -> DIR/eval.json.

  Bad inputs fail before anything is sampled: unknown decoders, missing feature-net
  weights, and a reference file of the wrong format, image size or feature dimension.
  """
  config_lib.validate(config)
  workdir = Path(workdir)
  decoders = decoders_to_evaluate(config)
  num, batch = int(config.eval.num_samples), int(config.eval.batch)
  suite = bool(config.eval.reference)
  if suite:
    ref_file = reference_lib.open_reference(config.eval.reference, pixel_side(config))
    net = adm.make_suite_net(config.eval.inception_weights or None, batch)
  else:
    net = features.make_feature_net(config)  # fails before sampling if weights miss
  exp, state, step = inference.restore(config, workdir)
  to_pixels = inference.pixel_decoder(exp)
  heldout, heldout_subset = input_pipeline.take_subset(
      config, 'heldout', config.eval_batches * config.batch_size)
  heldout_metrics = likelihood.heldout_metrics(exp.models.flow, state.ema['forward'], heldout,
                                               config)
  used = likelihood.examples_used(len(heldout['label']), config)
  heldout_subset.update(
      num_examples=used, batches=used // int(config.batch_size),
      class_counts=np.bincount(heldout['label'][:used],
                               minlength=int(config.model.num_classes)).astype(int).tolist())
  result: dict[str, Any] = {
      'step': step, 'feature_net': 'inception (ADM suite)' if suite else net.name,
      'num_samples': num, 'noise_sigma': float(config.objective.noise_sigma),
      'temperature': float(config.sample.temperature),
      **{f"heldout_{k.split('/')[1]}_ema": v for k, v in heldout_metrics.items()},
      'decoders': {}}
  protocol: dict[str, Any] = {'heldout_likelihood': heldout_subset,
                              'samples': sample_protocol(config, num),
                              'feature_net': net.fingerprint}

  if suite:
    progress = Progress('eval reference images', ref_file.num_images)
    ref, ref_record = reference_lib.reference_stats(ref_file, net, workdir / 'eval_cache',
                                                    batch, progress.update)
    protocol['reference'] = ref_record['reference']
    protocol['cache'] = ref_record.get('cache')

    def score(batches, what, total, samples_path=None):
      return score_against_reference(batches, net, ref, config, what, total, samples_path)
  else:
    real, cache_record = real_statistics(config, net, workdir / 'eval_cache', to_pixels)
    protocol['reference'] = {'what': 'the whole held-out split, featurised',
                             **cache_record['info']}
    protocol['cache'] = {k: cache_record[k] for k in ('file', 'key', 'recomputed', 'reason')}
    if config.model.num_classes:
      result['real_heldout_class_accuracy'] = float(
          np.mean(np.argmax(real['logits'], axis=-1) == real['labels']))

    def score(batches, what, total, samples_path=None):
      return score_against_heldout(batches, net, real, config, what, total, samples_path)

  # The floor: real training images, a class-balanced (or random) subset, scored exactly
  # like samples.
  if floor_count(config) > 0:
    floor = RealBatches(config, 'train', floor_count(config), batch, to_pixels)
    result['real_train_images'] = score(floor, 'eval floor (real training images)', len(floor))
    protocol['floor'] = floor.record()
  result['protocol'] = protocol
  for decoder in decoders:
    stream = Timed(sample_batches(config, state.ema, decoder, num, batch, to_pixels))
    path = None
    if config.eval.save_samples:
      path = workdir / SAMPLES_DIR / f'{decoder}_step{step}_n{num}.npz'
    entry = score(stream, f'eval {decoder}', num, path)
    entry['guidance'] = float(inference.decoder_guidance(config, decoder))
    entry['sampling_seconds'] = stream.seconds
    if path is not None:
      entry['samples_npz'] = str(path)
    result['decoders'][decoder] = entry
    logging.info('eval %s: %s', decoder, entry)
  files.write_text_atomic(workdir / 'eval.json', json.dumps(result, indent=2))  # never half
  return result
