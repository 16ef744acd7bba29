"""Trains a dataset's evaluation classifier (the offline feature net) and writes its asset.

    python -m biflow_jax.tools.train_classifier --out=biflow_jax/assets/mnist_classifier
    python -m biflow_jax.tools.train_classifier --dataset=cifar10 \
        --data_path=/path/cifar10-jpeg.tar.gz --out=biflow_jax/assets/cifar10_classifier

mnist: `evaluation.classifier.Classifier` on the bundled MNIST train split (9,000 digits,
`input_pipeline.bundled_mnist_split(9000, 1000)`) with random shifts of up to 2 pixels,
scored on the fixed 1,000 held-out digits; about two minutes on 2 CPU cores.
cifar10: the (32, 64, 128) x 2-conv GroupNorm net on the 50,000 training images of a
JPEG folder or tar laid out <split>/<class>/<file>.jpg (`input_pipeline.load_jpeg_images`),
with random 4-pixel crops (reflect padding) and horizontal flips, scored on the 10,000
test images; about 25 minutes on 2 CPU cores.

Writes <out>.npz (params) and <out>.json (accuracy, seed, steps, command, date, image
shape, architecture). Deterministic for a given seed on a given backend.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import classifier as clf
from biflow_jax.objective import primitives
from biflow_jax.runtime import files

NUM_TRAIN = 9000
NUM_HELDOUT = 1000


class Recipe(NamedTuple):
  """One dataset's classifier and training defaults (each overridable on the command line)."""
  module: clf.Classifier
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  max_shift: int
  flip: bool
  pad_mode: str        # how random shifts fill the border: 'background' (-1) | 'reflect'


RECIPES = {
    'mnist': Recipe(clf.Classifier(), 1500, 128, 2e-3, 1e-4, 2, False, 'background'),
    # 12 epochs of 50,000 at batch 128; GroupNorm lets AdamW train the 6-conv net this fast.
    'cifar10': Recipe(clf.Classifier(channels=(32, 64, 128), convs_per_stage=2, norm='group',
                                     feature_dim=256), 4700, 128, 3e-3, 5e-4, 4, True, 'reflect'),
}


def bundled_mnist_m11() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images, labels), (held-out images, labels)) of the bundled split, in [-1, 1]."""
  images, labels = input_pipeline.load_bundled_mnist()
  train_idx, heldout_idx = input_pipeline.bundled_mnist_split(NUM_TRAIN, NUM_HELDOUT)
  return ((primitives.from_uint8(images[train_idx]), labels[train_idx]),
          (primitives.from_uint8(images[heldout_idx]), labels[heldout_idx]))


def cifar10_m11(data_path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images, labels), (test images, labels)) of a CIFAR-10 JPEG folder or tar, in [-1, 1].

  Raises ValueError for a missing path or a layout without train/ and test/ class folders.
  """
  if not data_path:
    raise ValueError('--dataset=cifar10 needs --data_path=<folder or .tar.gz with '
                     'train/<class>/*.jpg and test/<class>/*.jpg>')
  splits = []
  for split in ('train', 'test'):
    images, labels, classes = input_pipeline.load_jpeg_images(data_path, split, channels=3,
                                                              image_size=32)
    if len(classes) != 10:
      raise ValueError(f'{data_path}:{split} has {len(classes)} class folders {classes}; '
                       'CIFAR-10 has 10')
    splits.append((primitives.from_uint8(images), labels))
  return splits[0], splits[1]


def load_dataset(dataset: str, data_path: str = '') -> tuple[
    tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict[str, Any]]:
  """((train images, labels), (held-out images, labels), provenance) of a RECIPES dataset,
  images in [-1, 1]; provenance (dataset, split, and for files their name and sha256) is
  what an asset's JSON records of its data. Raises ValueError as `cifar10_m11` does."""
  if dataset == 'mnist':
    return (*bundled_mnist_m11(), {
        'dataset': 'bundled_mnist',
        'split': f'input_pipeline.bundled_mnist_split({NUM_TRAIN}, {NUM_HELDOUT})'})
  train, heldout = cifar10_m11(data_path)
  return train, heldout, {
      'dataset': dataset,
      'split': 'train/ (training) and test/ (held out) of the JPEG data',
      'data_file': Path(data_path).name,
      'data_sha256': (files.sha256(data_path) if Path(data_path).is_file()
                      else 'a folder (not hashed)')}


def random_shift(key: jax.Array, x: jax.Array, max_shift: int,
                 pad_mode: str = 'background') -> jax.Array:
  """Shifts each image by up to `max_shift` pixels each way (a random crop of the padded
  image), filling with background (-1) or, with pad_mode='reflect', the mirrored border."""
  if max_shift <= 0:
    return x
  b, h, w, c = x.shape
  p = max_shift
  pad = ((0, 0), (p, p), (p, p), (0, 0))
  padded = (jnp.pad(x, pad, mode='reflect') if pad_mode == 'reflect'
            else jnp.pad(x, pad, constant_values=-1.0))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * p + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def train_classifier(
    images_m11: np.ndarray, labels: np.ndarray, *, module: clf.Classifier | None = None,
    steps: int = 1500, batch_size: int = 128, learning_rate: float = 2e-3,
    weight_decay: float = 1e-4, max_shift: int = 2, flip: bool = False,
    pad_mode: str = 'background', seed: int = 0, log_every: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
  """Trains from scratch; returns (variables, per-step training losses).

  AdamW with linear warm-up and cosine decay, cross-entropy, shuffled epochs (numpy
  permutations from `seed`), random shifts (and with `flip`, horizontal flips of half
  the images) drawn from jax.random.PRNGKey(seed).
  """
  module = module or clf.Classifier()
  images_m11 = np.asarray(images_m11, np.float32)
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  if n < batch_size:
    raise ValueError(f'{n} training examples is fewer than batch_size={batch_size}')
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(seed))
  params = module.init(init_key, jnp.zeros((1,) + images_m11.shape[1:], jnp.float32))['params']
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=max(1, min(100, steps // 10)), decay_steps=max(steps, 2))
  tx = optax.adamw(schedule, weight_decay=weight_decay)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y, key):
    shift_key, flip_key = jax.random.split(key)
    x = random_shift(shift_key, x, max_shift, pad_mode)
    if flip:
      flipped = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
      x = jnp.where(flipped, x[:, :, ::-1], x)

    def loss_fn(p):
      logits, _ = module.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  order = np.empty(0, np.int64)
  losses = []
  for i in range(steps):
    if i % per_epoch == 0:
      order = rng.permutation(n)
    idx = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
    params, opt_state, loss = step(params, opt_state, jnp.asarray(images_m11[idx]),
                                   jnp.asarray(labels[idx]), jax.random.fold_in(aug_key, i))
    losses.append(loss)
    if log_every and (i + 1) % log_every == 0:
      print(f'step {i + 1}/{steps} loss {float(np.mean(jax.device_get(losses[-log_every:]))):.4f}',
            flush=True)
  return {'params': params}, np.asarray(jax.device_get(losses), np.float64)


def tool_parser(tool: str, kind: str, description: str,
                defaults: dict[str, Any]) -> argparse.ArgumentParser:
  """The flags both training tools share (this one and train_feature_net): the dataset,
  where to write `<out>.npz/.json` (default biflow_jax/assets/<dataset>_<kind>) and the
  optimisation. `defaults` gives steps, batch_size, learning_rate, weight_decay,
  max_shift and seed (None = the dataset's recipe)."""
  parser = argparse.ArgumentParser(prog=f'python -m biflow_jax.tools.{tool}',
                                   description=description)
  parser.add_argument('--dataset', default='mnist', choices=sorted(RECIPES))
  parser.add_argument('--data_path', default='',
                      help='cifar10: a JPEG folder or .tar(.gz) with train/ and test/ class folders')
  parser.add_argument('--out', default='',
                      help='output prefix: writes <out>.npz and <out>.json '
                           f'(default biflow_jax/assets/<dataset>_{kind})')
  for field, kind_of in (('steps', int), ('batch_size', int), ('learning_rate', float),
                         ('weight_decay', float), ('max_shift', int), ('seed', int)):
    parser.add_argument(f'--{field}', type=kind_of, default=defaults[field])
  parser.add_argument('--log_every', type=int, default=100)
  parser.set_defaults(kind=kind)
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  args = tool_parser('train_classifier', 'classifier', __doc__.split('\n')[0], dict(
      steps=None, batch_size=None, learning_rate=None, weight_decay=None, max_shift=None,
      seed=0)).parse_args(list(argv))
  recipe = RECIPES[args.dataset]
  for field in ('steps', 'batch_size', 'learning_rate', 'weight_decay', 'max_shift'):
    if getattr(args, field) is None:
      setattr(args, field, getattr(recipe, field))
  return with_default_out(args)


def with_default_out(args: argparse.Namespace) -> argparse.Namespace:
  if not args.out:
    args.out = f'biflow_jax/assets/{args.dataset}_{args.kind}'
  return args


def fit(args: argparse.Namespace, module, train_x: np.ndarray, train_y: np.ndarray
        ) -> tuple[Any, np.ndarray, float]:
  """(float32 params, per-step losses, seconds) of `module` trained as `args` says, with
  the dataset's augmentation recipe."""
  recipe = RECIPES[args.dataset]
  t0 = time.perf_counter()
  variables, losses = train_classifier(
      train_x, train_y, module=module, steps=args.steps, batch_size=args.batch_size,
      learning_rate=args.learning_rate, weight_decay=args.weight_decay,
      max_shift=args.max_shift, flip=recipe.flip, pad_mode=recipe.pad_mode, seed=args.seed,
      log_every=args.log_every)
  seconds = time.perf_counter() - t0
  # Measured with the float32 params exactly as they are written.
  params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32)), variables['params'])
  return params, losses, seconds


def provenance_record(args: argparse.Namespace, argv: Sequence[str], tool: str,
                      provenance: dict[str, Any], image_shape: Sequence[int],
                      train_examples: int, heldout_examples: int, accuracy: float,
                      losses: np.ndarray, seconds: float) -> dict[str, Any]:
  """What the <out>.json of both training tools records: data, recipe, result, command."""
  recipe = RECIPES[args.dataset]
  return {
      **provenance,
      'input_range': '[-1, 1] (x = uint8 / 127.5 - 1)',
      'image_shape': list(image_shape),
      'heldout_accuracy': accuracy,
      'train_examples': int(train_examples),
      'heldout_examples': int(heldout_examples),
      'seed': args.seed,
      'steps': args.steps,
      'batch_size': args.batch_size,
      'learning_rate': args.learning_rate,
      'weight_decay': args.weight_decay,
      'max_shift': args.max_shift,
      'flip': recipe.flip,
      'pad_mode': recipe.pad_mode,
      'final_train_loss': float(losses[-min(100, len(losses)):].mean()),
      'train_seconds': round(seconds, 1),
      'backend': jax.default_backend(),
      'jax_version': jax.__version__,
      'command': ' '.join([f'python -m biflow_jax.tools.{tool}'] + list(argv)),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d'),
  }


def report(accuracy: float, heldout: int, steps: int, seconds: float, npz, meta) -> None:
  print(f'held-out accuracy {accuracy:.4f} on {heldout} images after {steps} steps '
        f'({seconds:.1f} s); wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB) and {meta}',
        flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  (train_x, train_y), (heldout_x, heldout_y), provenance = load_dataset(args.dataset,
                                                                        args.data_path)
  module = RECIPES[args.dataset].module
  params, losses, seconds = fit(args, module, train_x, train_y)
  variables = {'params': params}
  acc = clf.accuracy(module, variables, heldout_x, heldout_y)
  info = provenance_record(args, argv, 'train_classifier', provenance, train_x.shape[1:],
                           len(train_y), len(heldout_y), acc, losses, seconds)
  info.update(feature_dim=module.feature_dim, architecture=clf.architecture(module))
  npz, meta = clf.save_classifier(args.out, variables, info)
  report(acc, len(heldout_y), args.steps, seconds, npz, meta)
  return info

if __name__ == '__main__':
  main()
