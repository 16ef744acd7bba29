"""Trains the loss feature net (`feature_term.LossFeatureNet`) and writes the shipped asset.

    python -m biflow_jax.tools.train_feature_net --out=biflow_jax/data/mnist_feature_net
    python -m biflow_jax.tools.train_feature_net --dataset=cifar10 \
        --data_path=/path/cifar10-jpeg.tar.gz --out=biflow_jax/data/cifar10_feature_net

The network G's feature term compares images with (`perceptual.feature_weight`). It is
trained as a digit classifier on the bundled MNIST *training* split only (9,000 digits,
`input_pipeline.bundled_mnist_split(9000, 1000)`), with random shifts of up to 2 pixels,
by the same loop as the evaluation classifier (`tools.train_classifier.train_classifier`)
but with another architecture and another seed, so that the loss never optimises the
features that evaluation scores with. Its accuracy on the fixed 1,000 held-out digits is
measured and recorded in <out>.json, with the command, seed, steps and date. About one
minute on 2 CPU cores. cifar10: the same net on the 50,000 training images of the JPEG
data (`tools.train_classifier.load_dataset`) with random 4-pixel crops and flips, scored
on the 10,000 test images.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax import feature_term
from biflow_jax.tools import train_classifier as tc


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m biflow_jax.tools.train_feature_net', description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='mnist', choices=sorted(tc.RECIPES))
  parser.add_argument('--data_path', default='',
                      help='cifar10: a JPEG folder or .tar(.gz) with train/ and test/ class folders')
  parser.add_argument('--out', default='',
                      help='output prefix: writes <out>.npz and <out>.json '
                           '(default biflow_jax/data/<dataset>_feature_net)')
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--learning_rate', type=float, default=2e-3)
  parser.add_argument('--weight_decay', type=float, default=1e-4)
  parser.add_argument('--max_shift', type=int, default=2)
  parser.add_argument('--seed', type=int, default=1)  # the evaluation classifier uses 0
  parser.add_argument('--log_every', type=int, default=100)
  args = parser.parse_args(list(argv))
  if not args.out:
    args.out = f'biflow_jax/data/{args.dataset}_feature_net'
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  recipe = tc.RECIPES[args.dataset]
  (train_x, train_y), (heldout_x, heldout_y), provenance = tc.load_dataset(args.dataset,
                                                                           args.data_path)
  provenance['split'] += ': trained on the train part only'
  module = feature_term.LossFeatureNet(num_classes=int(train_y.max()) + 1)
  t0 = time.perf_counter()
  variables, losses = tc.train_classifier(
      train_x, train_y, module=module, steps=args.steps, batch_size=args.batch_size,
      learning_rate=args.learning_rate, weight_decay=args.weight_decay,
      max_shift=args.max_shift, flip=recipe.flip, pad_mode=recipe.pad_mode, seed=args.seed,
      log_every=args.log_every)
  train_seconds = time.perf_counter() - t0
  # Measure with the float32 params exactly as they are written.
  params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32)), variables['params'])
  acc = feature_term.accuracy(module, params, heldout_x, heldout_y)
  info = {
      'purpose': 'feature term of G\'s loss (perceptual.feature_weight); not used by evaluation',
      **provenance,
      'image_shape': list(train_x.shape[1:]),
      'input_range': '[-1, 1] (x = uint8 / 127.5 - 1)',
      'heldout_accuracy': acc,
      'train_examples': int(len(train_y)),
      'heldout_examples': int(len(heldout_y)),
      'seed': args.seed,
      'steps': args.steps,
      'batch_size': args.batch_size,
      'learning_rate': args.learning_rate,
      'weight_decay': args.weight_decay,
      'max_shift': args.max_shift,
      'flip': recipe.flip,
      'pad_mode': recipe.pad_mode,
      'final_train_loss': float(losses[-min(100, len(losses)):].mean()),
      'train_seconds': round(train_seconds, 1),
      'backend': jax.default_backend(),
      'jax_version': jax.__version__,
      'command': ' '.join(['python -m biflow_jax.tools.train_feature_net'] + argv),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d'),
      'architecture': feature_term.architecture(module),
  }
  npz, meta = feature_term.save(args.out, params, info)
  print(f'held-out accuracy {acc:.4f} on {len(heldout_y)} images after {args.steps} steps '
        f'({train_seconds:.1f} s); wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB) and {meta}',
        flush=True)
  return info


if __name__ == '__main__':
  main()
