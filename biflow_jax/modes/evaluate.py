"""`--mode=eval`: every metric for every decoder asked for -> DIR/eval.json.

- bits/dim of the held-out data under F (EMA weights);
- per decoder (G in 1 NFE, F's exact inverse, F's fixed-point inverse), on
  `eval.num_samples` class-balanced samples, and for a floor row of real training
  images scored the same way, one of two protocols:
  - against the held-out split (default): a Frechet distance in the feature space of the
    chosen feature net (the project's dataset classifier, shipped for bundled MNIST, or
    the FID InceptionV3), Inception Score, precision/recall (k-NN manifolds) and, for
    class-conditional models scored by the dataset's own classifier (not the FID
    Inception, whose logits are ImageNet's classes), the accuracy with which the
    classifier recognises the asked-for class;
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

Over several processes (any launcher of `launch/`), each process makes and featurises
its share of every stream's batches, and process 0 scores them in the one-process order
(`evaluation.shares`) and alone writes eval.json, the cache and the samples; outputs go
through etils.epath, so the workdir may be gs://.

Latent runs (data.source='latents') are scored in pixel space: samples go through the
frozen VAE decoder. Without a reference file the real side is the decoder's image of
each held-out latent's posterior mean (VAE reconstructions, which no paper uses); with
one it is the suite's reference batch. The held-out metric is then NLL per latent
dimension.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from biflow_jax import config_lib
from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import (adm, cache, features, fingerprint as fp, likelihood, metrics,
                                   npz_stream, reference as reference_lib, shares)
from biflow_jax.evaluation.features import FeatureNet
from biflow_jax.evaluation.progress import Progress
from biflow_jax.inference import decoders, sampling
from biflow_jax.objective import frozen, primitives
from biflow_jax.runtime import files, images, parallel
from biflow_jax.training import restore

EVAL_SEED = 2024
# Bumped whenever what real_statistics stores changes, so old entries are not reused.
REAL_STATS_VERSION = 2
SAMPLES_DIR = 'eval_samples'

Batches = Iterator[tuple[np.ndarray, np.ndarray]]  # (images in [-1, 1] NHWC, labels)


def decoders_to_evaluate(config) -> tuple[str, ...]:
  names = config.eval.decoders
  if not names:
    return tuple(d for d in sampling.DECODERS if config.reverse.enabled or d != 'reverse')
  chosen = tuple(d.strip() for d in names.split(',') if d.strip())
  for d in chosen:
    if d not in sampling.DECODERS:
      raise ValueError(f'config.eval.decoders: unknown decoder {d!r}; use {sampling.DECODERS}')
    if d == 'reverse' and not config.reverse.enabled:
      raise ValueError("config.eval.decoders asks for 'reverse' but config.reverse.enabled=False")
  return chosen


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
    return primitives.from_uint8(batch['image'])
  if to_pixels is None:
    raise ValueError('latent data needs the VAE decoder (config.vae.weights) to be scored')
  scale, size = float(config.vae.scaling_factor), int(config.eval.batch)
  means = batch['latent_mean']
  return np.concatenate([np.asarray(to_pixels(jnp.asarray(means[i:i + size]) * scale))
                         for i in range(0, len(means), size)])


# ------------------------------------------------------------------------ image streams


class SampleBatches:
  """`num` samples from `decoder` in numbered batches of `batch`: get(j) -> (images in
  [-1, 1] float32 NHWC, labels).

  Sample i asks for class i mod num_classes; batch j draws its noise from
  fold_in(PRNGKey(EVAL_SEED), j), so a batch is the same whichever process makes it.
  `params` must be usable by this process alone (`parallel.local_copy`). Latent samples
  are decoded by `to_pixels` (the VAE). `seconds` counts the time spent sampling.
  """

  def __init__(self, config, params, decoder: str, num: int, batch: int, to_pixels=None):
    self.params, self.to_pixels = params, to_pixels
    self.num, self.batch = int(num), int(batch)
    self.sampler = sampling.make_sampler(config, decoder,
                                         decoders.default_denoise(config, decoder))
    self.guidance = decoders.decoder_guidance(config, decoder)
    self.temperature = decoders.decoder_temperature(config, decoder)
    classes = config.model.num_classes
    self.labels = ((np.arange(self.num) % classes).astype(np.int32) if classes
                   else -np.ones(self.num, np.int32))
    self.seconds = 0.0

  def __len__(self) -> int:
    return self.num

  @property
  def num_batches(self) -> int:
    return -(-self.num // self.batch)

  def get(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    t0 = time.perf_counter()
    y = self.labels[j * self.batch:(j + 1) * self.batch]
    rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), j)
    x = self.sampler(self.params, rng, jnp.asarray(y), guidance=self.guidance,
                     temperature=self.temperature)
    x = np.asarray(x if self.to_pixels is None else self.to_pixels(x), np.float32)
    self.seconds += time.perf_counter() - t0
    return x, y

  def __iter__(self) -> Batches:
    return (self.get(j) for j in range(self.num_batches))


class RealBatches:
  """The floor's real images in numbered batches of `batch`, from `input_pipeline.subset`:
  get(j) -> (images in [-1, 1], labels); `record(labels)` describes the subset with the
  class counts of what was read."""

  def __init__(self, config, part: str, num: int, batch: int, to_pixels=None):
    self.config, self.batch, self.to_pixels = config, int(batch), to_pixels
    self.source = input_pipeline.load_source(config, part)
    self.subset = input_pipeline.subset(config, part, self.source, num)

  def __len__(self) -> int:
    return int(self.subset.indices.size)

  @property
  def num_batches(self) -> int:
    return -(-len(self) // self.batch)

  def get(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    examples = self.source.gather(self.subset.indices[j * self.batch:(j + 1) * self.batch])
    return real_images(self.config, examples, self.to_pixels), examples['label']

  def __iter__(self) -> Batches:
    return (self.get(j) for j in range(self.num_batches))

  def record(self, labels: np.ndarray) -> dict:
    return self.subset.describe(labels, self.config.model.num_classes)


def rgb_uint8(images_m11: np.ndarray) -> np.ndarray:
  """[-1, 1] NHWC -> uint8 RGB (grey repeated), as the suite's .npz stores images."""
  out = images.to_uint8(images_m11)
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def consume(batches, featurise, accumulate, what: str,
            samples_path: epath.PathLike | None = None) -> dict:
  """Featurises every batch of `batches` (num_batches, batch, get(j)) and accumulates the
  features in batch order, over however many processes run (`shares.in_order`: each makes
  its share, all see every batch). featurise(images) -> {name: (n, ...) array};
  accumulate({names..., 'labels'}) runs on process 0 only, which alone writes the samples
  .npz (`samples_path`: arr_0 uint8 RGB, arr_1 labels) as the suite stores batches.

  Returns {'seconds', 'per_second', 'labels' (every label, in order)}; logs progress.
  """
  main = parallel.is_main_process()
  total = len(batches)
  progress = Progress(what, total)
  save = samples_path is not None

  def produce(j: int) -> dict[str, np.ndarray]:
    x, y = batches.get(j)
    out = dict(featurise(x), labels=np.asarray(y))
    if save:
      out['samples_uint8'] = rgb_uint8(x)
    return out

  writer = None
  labels_seen = []
  try:
    for part in shares.in_order(batches.num_batches, produce, batches.batch):
      rows = part.pop('samples_uint8', None)
      if main:
        if save:
          if writer is None:
            writer = npz_stream.NpzWriter(samples_path, (total,) + rows.shape[1:], np.uint8)
          writer.append(rows)
        accumulate(part)
      labels_seen.append(part['labels'])
      progress.update(part['labels'].shape[0])
    labels = (np.concatenate(labels_seen) if labels_seen else np.zeros(0, np.int32))
    if writer is not None:
      writer.extra['arr_1'] = labels.astype(np.int64)
      writer.close()
      writer = None
  finally:
    if writer is not None:
      writer.abort()
  return {'seconds': progress.seconds(), 'labels': labels,
          'per_second': progress.done / max(progress.seconds(), 1e-9)}


# ----------------------------------------------------- protocol 1: the held-out split


def real_statistics(config, net: FeatureNet, cache_dir: epath.PathLike,
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


def has_class_accuracy(config, net: FeatureNet) -> bool:
  """Whether class accuracy means something: a class-conditional model scored by the
  dataset's classifier (net.classes set: not the FID Inception, whose logits are
  ImageNet's), with at least the model's classes (a model of the first k classes of its
  dataset is scored by the dataset's classifier; data.name picks it)."""
  return (bool(config.model.num_classes) and net.classes is not None
          and net.classes >= int(config.model.num_classes))


def class_accuracy_protocol(config, net: FeatureNet) -> str:
  """What eval.json's class accuracy is, or why there is none ('protocol.class_accuracy')."""
  if has_class_accuracy(config, net):
    return (f'argmax of {net.name} (the dataset classifier, {net.classes} classes) == the '
            'class asked for (samples) or the true class (real images)')
  if not config.model.num_classes:
    return 'not reported: the model is unconditional'
  scored = ('ImageNet classes (1008 logits), not the dataset\'s' if net.classes is None
            else f'{net.classes} classes, fewer than the model\'s {int(config.model.num_classes)}')
  return (f'not reported: the logits of {net.name} are {scored}; use '
          '--config.eval.feature_net=classifier for class accuracy')


def feature_metrics(logits: np.ndarray, feats: np.ndarray, labels: np.ndarray, real: dict,
                    config, classes: int | None = None) -> dict:
  """Frechet distance, IS, precision/recall and class accuracy of featurised images
  against the held-out statistics `real`. Class accuracy only when the logits are the
  dataset's own classes (`classes`, FeatureNet.classes: set, and at least
  config.model.num_classes; see has_class_accuracy)."""
  mu, sigma = metrics.feature_stats(feats)
  is_mean, is_std = metrics.inception_score(logits, splits=int(config.eval.is_splits))
  precision, recall = metrics.precision_recall(real['features'], feats, k=int(config.eval.pr_k))
  result = {'frechet_distance': metrics.frechet_distance(mu, sigma, real['mu'], real['sigma']),
            'inception_score': is_mean, 'inception_score_std': is_std,
            'precision': precision, 'recall': recall}
  if (config.model.num_classes and classes is not None
      and logits.shape[-1] == classes >= int(config.model.num_classes)):
    result['class_accuracy'] = float(np.mean(np.argmax(logits, axis=-1) == labels))
  return result


def score_against_heldout(batches, net: FeatureNet, real: dict | None, config, what: str,
                          samples_path: epath.PathLike | None = None) -> tuple[dict | None, dict]:
  """(metrics, run): featurises a stream of images and scores it with `feature_metrics`
  (features, not images, are kept); metrics on process 0 (which alone needs `real`),
  None elsewhere; run is `consume`'s record."""
  parts: dict[str, list[np.ndarray]] = {'logits': [], 'features': [], 'labels': []}

  def featurise(x):
    logits, feats = net.fn(x)
    return {'logits': np.asarray(logits), 'features': np.asarray(feats)}

  def accumulate(part):
    for k in parts:
      parts[k].append(part[k])

  run = consume(batches, featurise, accumulate, what, samples_path)
  if not parallel.is_main_process():
    return None, run
  return feature_metrics(*(np.concatenate(parts[k]) for k in ('logits', 'features', 'labels')),
                         real, config, net.classes), run


# ------------------------------------------------ protocol 2: an ADM reference batch


def score_against_reference(batches, net: adm.SuiteNet, ref: adm.ReferenceStats | None,
                            config, what: str, samples_path: epath.PathLike | None = None
                            ) -> tuple[dict | None, dict]:
  """(metrics, run): quantises a stream of images to uint8 (as the suite's .npz would hold
  them), featurises it with the FID Inception and scores it as the suite does; metrics on
  process 0 (which alone needs `ref`), None elsewhere."""
  acc = adm.SuiteAccumulator(net.dims)
  run = consume(batches, lambda x: net.fn(rgb_uint8(x)), acc.update, what, samples_path)
  if not parallel.is_main_process():
    return None, run
  return adm.suite_scores(acc, ref, k=int(config.eval.pr_k)), run


# ------------------------------------------------------------------------------- eval


def sample_protocol(config, num: int) -> dict:
  """How generated samples are drawn (eval.json 'protocol.samples')."""
  classes = int(config.model.num_classes)
  return {'num_samples': int(num), 'seed': EVAL_SEED, 'batch': int(config.eval.batch),
          'labels': (f'class-balanced: sample i asks for class i mod {classes}' if classes
                     else 'unconditional'),
          'temperature': float(config.sample.temperature),
          'reverse_temperature': float(decoders.reverse_temperature(config))}


def process_protocol() -> dict:
  """How the work was split over processes (eval.json 'protocol.processes')."""
  return {'count': jax.process_count(),
          'deal': 'batch j of each stream made by process j mod count; features gathered '
                  'and scored on process 0 in batch order'}


def run(config, workdir: epath.PathLike) -> dict | None:
  """Every metric for every decoder asked for, from the latest checkpoint -> DIR/eval.json.

  Every process of a multi-process job calls this: each makes and featurises its share
  of every image stream (`shares.in_order`), the held-out likelihood runs on the mesh,
  and process 0 scores, writes DIR/eval.json (the workdir may be gs://; paths go
  through etils.epath), the eval cache and any samples .npz, and returns the result;
  the other processes return None.

  Bad inputs fail before anything is sampled: unknown decoders, missing feature-net
  weights, and a reference file of the wrong format, image size or feature dimension
  (checked on every process, so the file must be readable by all).
  """
  config_lib.validate(config)
  workdir = epath.Path(workdir)
  main = parallel.is_main_process()
  chosen = decoders_to_evaluate(config)
  num, batch = int(config.eval.num_samples), int(config.eval.batch)
  suite = bool(config.eval.reference)
  if suite:
    ref_file = reference_lib.open_reference(config.eval.reference, pixel_side(config))
    net = adm.make_suite_net(config.eval.inception_weights or None, batch)
  else:
    net = features.make_feature_net(config)  # fails before sampling if weights miss
  exp, state, step = restore.restore_run(config, workdir)
  # Each process samples its own batches, so it needs weights it can run on alone.
  params = parallel.local_copy(state.ema)
  to_pixels = decoders.pixel_decoder(exp.models.frozen, parallel.local_copy(exp.frozen_params))
  heldout, heldout_subset = input_pipeline.take_subset(
      config, 'heldout', config.eval_batches * config.batch_size)
  heldout_metrics = likelihood.heldout_metrics(exp.models.flow, state.ema['forward'], heldout,
                                               config, exp.mesh)
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
                              'feature_net': net.fingerprint,
                              'processes': process_protocol()}
  cache_dir = workdir / 'eval_cache'

  # The real side is needed where the scores are computed: on process 0, which alone
  # reads and writes the cache (the others go on to their first share and wait there).
  if suite:
    ref = None
    if main:
      progress = Progress('eval reference images', ref_file.num_images)
      ref, ref_record = reference_lib.reference_stats(ref_file, net, cache_dir, batch,
                                                      progress.update)
      protocol['reference'] = ref_record['reference']
      protocol['cache'] = ref_record.get('cache')

    def score(batches, what, samples_path=None):
      return score_against_reference(batches, net, ref, config, what, samples_path)
  else:
    real = None
    if main:
      real, cache_record = real_statistics(config, net, cache_dir, to_pixels)
      protocol['reference'] = {'what': 'the whole held-out split, featurised',
                               **cache_record['info']}
      protocol['cache'] = {k: cache_record[k] for k in ('file', 'key', 'recomputed', 'reason')}
      protocol['class_accuracy'] = class_accuracy_protocol(config, net)
      if has_class_accuracy(config, net):
        result['real_heldout_class_accuracy'] = float(
            np.mean(np.argmax(real['logits'], axis=-1) == real['labels']))

    def score(batches, what, samples_path=None):
      return score_against_heldout(batches, net, real, config, what, samples_path)

  # The floor: real training images, a class-balanced (or random) subset, scored exactly
  # like samples.
  if floor_count(config) > 0:
    floor = RealBatches(config, 'train', floor_count(config), batch, to_pixels)
    result['real_train_images'], run = score(floor, 'eval floor (real training images)')
    protocol['floor'] = floor.record(run['labels'])
  result['protocol'] = protocol
  for decoder in chosen:
    stream = SampleBatches(config, params, decoder, num, batch, to_pixels)
    path = None
    if config.eval.save_samples:
      path = workdir / SAMPLES_DIR / f'{decoder}_step{step}_n{num}.npz'
    entry, _ = score(stream, f'eval {decoder}', path)
    if not main:
      continue
    entry['guidance'] = float(decoders.decoder_guidance(config, decoder))
    entry['temperature'] = float(decoders.decoder_temperature(config, decoder))
    # Process 0's own share: with P processes, about 1/P of the samples.
    entry['sampling_seconds'] = stream.seconds
    if path is not None:
      entry['samples_npz'] = str(path)
    result['decoders'][decoder] = entry
    logging.info('eval %s: %s', decoder, entry)
  if not main:
    return None
  # Strict JSON: a non-finite metric (a diverged decoder) is written as a string naming it.
  files.write_text_atomic(workdir / 'eval.json', files.json_text(result, 'eval.json'))
  logging.info('wrote %s', workdir / 'eval.json')
  return result
