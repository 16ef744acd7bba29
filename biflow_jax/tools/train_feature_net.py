"""Trains the loss feature net (`feature_term.LossFeatureNet`) and writes the shipped asset.

    python -m biflow_jax.tools.train_feature_net --out=biflow_jax/assets/mnist_feature_net
    python -m biflow_jax.tools.train_feature_net --dataset=cifar10 \
        --data_path=/path/cifar10-jpeg.tar.gz --out=biflow_jax/assets/cifar10_feature_net

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
import sys
from collections.abc import Sequence
from typing import Any

from biflow_jax.objective import feature_term
from biflow_jax.tools import train_classifier as tc


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  defaults = dict(steps=1000, batch_size=128, learning_rate=2e-3, weight_decay=1e-4,
                  max_shift=2, seed=1)  # seed 1: the evaluation classifier uses 0
  parser = tc.tool_parser('train_feature_net', 'feature_net', __doc__.split('\n')[0], defaults)
  parser.add_argument('--channels', default=','.join(map(str, feature_term.LossFeatureNet.channels)),
                      help="the three convs' widths, e.g. 48,96,192 (recorded in <out>.json)")
  args = parser.parse_args(list(argv))
  try:
    args.channels = tuple(int(c) for c in args.channels.split(','))
  except ValueError:
    parser.error(f'--channels={args.channels!r}: give comma-separated integers')
  if len(args.channels) != len(feature_term.LossFeatureNet.strides) or min(args.channels) < 1:
    parser.error(f'--channels={args.channels}: give {len(feature_term.LossFeatureNet.strides)} '
                 'positive widths')
  return tc.with_default_out(args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  (train_x, train_y), (heldout_x, heldout_y), provenance = tc.load_dataset(args.dataset,
                                                                           args.data_path)
  provenance['split'] += ': trained on the train part only'
  module = feature_term.LossFeatureNet(channels=args.channels, num_classes=int(train_y.max()) + 1)
  params, losses, seconds = tc.fit(args, module, train_x, train_y)
  acc = feature_term.accuracy(module, params, heldout_x, heldout_y)
  info = tc.provenance_record(args, argv, 'train_feature_net', provenance, train_x.shape[1:],
                              len(train_y), len(heldout_y), acc, losses, seconds)
  info.update(purpose="feature term of G's loss (perceptual.feature_weight); not used by "
              'evaluation', architecture=feature_term.architecture(module))
  npz, meta = feature_term.save(args.out, params, info)
  tc.report(acc, len(heldout_y), args.steps, seconds, npz, meta)
  return info


if __name__ == '__main__':
  main()
