"""Does a decoder use its noise? How far its output moves with z, against the data's spread.

    python -m biflow_jax.tools.z_sensitivity --config=configs/mnist.py --workdir=workdir/mnist \
        [--guidance=0] [--temperature=1] [--per_class=100] [--train_examples=0] \
        [--out=DIR/z_sensitivity.json]

For a class-conditional run, on the held-out split, per decoder (G at `--guidance`
through its input; F's exact inverse with score denoising at the same guidance):

- `spread_ratio`: for each class, the per-pixel standard deviation of `--per_class`
  samples (z ~ N(0, t^2 I), the class fixed) divided by that of the class's held-out
  digits, averaged over pixels and classes. About 1 when the decoder varies as much as the
  data does; near 0 when it ignores z (one digit per class).
- `reconstruction` (G only): G(F(x~), y) for held-out x (x~ = x + sigma eps, F's EMA
  weights): mean squared error to x, and `swap_ratio`, the mean over same-class pairs
  (i, j) of ||G(z_i, y) - G(z_j, y)|| / ||x_i - x_j||: about 1 when G turns different
  latents of a class into different digits, near 0 when it outputs the class's average
  whatever z it is given; and `class_mean_mse`, the error of the decoder that outputs
  each class's mean held-out image whatever z it is given (the scale for `mse`: 0.206 on
  the bundled MNIST held-out split, against about sigma^2 = 0.01 for F's exact inverse,
  which returns x~).
- `reconstruction_train` (G only, with `--train_examples=N`): the same numbers on the first
  N digits of the training split as evaluation takes them. G learned from F's latents of
  exactly these digits, so an MSE far below the held-out one says G memorised them; about
  the same says it fits both equally (well or badly).

Pixels in [-1, 1]. The exact inverse's spread is the reference a working G should
approach. Measured numbers for the MNIST default are in docs/experiments/mnist.md.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from biflow_jax import config_lib
from biflow_jax.data import input_pipeline
from biflow_jax.inference import decoders, sampling
from biflow_jax.objective import primitives
from biflow_jax.runtime import cli, console
from biflow_jax.training import restore

SEED = 7


def spread(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes,) mean over pixels of the per-pixel std within each class."""
  return np.asarray([images[labels == c].std(axis=0).mean() for c in range(num_classes)])


def class_mean_mse(images: np.ndarray, labels: np.ndarray) -> float:
  """Per-pixel mean squared error of replacing each image by its class's mean image.

  images: (N, ...) floats; labels: (N,) ints. The reconstruction error of a decoder that
  regresses all the way to the class mean (mean over images and pixels)."""
  images = np.asarray(images, np.float64)
  total = 0.0
  for c in np.unique(labels):
    group = images[labels == c]
    total += float(((group - group.mean(axis=0)) ** 2).sum())
  return total / images.size


def split_images(config, part: str, num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`num` examples (all when None) of `part` ('train' | 'heldout') as evaluation takes them
  (`input_pipeline.subset`): images (N, H, W, C) in [-1, 1] and labels (N,) int32."""
  examples, _ = input_pipeline.take_subset(config, part, num)
  return primitives.from_uint8(examples['image']), examples['label'].astype(np.int32)


def heldout_images(config) -> tuple[np.ndarray, np.ndarray]:
  """The whole held-out split (`split_images`)."""
  return split_images(config, 'heldout')


def measure(config, workdir, guidance: float = 0.0, temperature: float = 1.0,
            per_class: int = 100, train_examples: int = 0) -> dict:
  """The module docstring's numbers for the run in `workdir`."""
  config_lib.validate(config)
  classes = int(config.model.num_classes)
  if not classes:
    raise ValueError('z_sensitivity compares samples within a class: the config is '
                     'unconditional (model.num_classes=0)')
  exp, state, _ = restore.restore_run(config, workdir)
  params = state.ema
  x, y = heldout_images(config)
  data_spread = spread(x, y, classes)
  labels = jnp.asarray(np.repeat(np.arange(classes, dtype=np.int32), per_class))
  names = ('reverse', 'exact') if config.reverse.enabled else ('exact',)
  result = {'guidance': guidance, 'temperature': temperature, 'per_class': per_class,
            'data_spread': float(data_spread.mean()), 'decoders': {}}
  for name in names:
    sampler = sampling.make_sampler(config, name, decoders.default_denoise(config, name))
    out = []
    for i in range(0, labels.shape[0], 250):
      out.append(np.asarray(sampler(params, jax.random.fold_in(jax.random.PRNGKey(SEED), i),
                                    labels[i:i + 250], guidance=guidance,
                                    temperature=temperature)))
    samples = np.concatenate(out)
    ratio = spread(samples, np.asarray(labels), classes) / data_spread
    result['decoders'][name] = {'spread_ratio': float(ratio.mean()),
                                'spread_ratio_per_class': [round(float(r), 4) for r in ratio]}
  if config.reverse.enabled:
    result['decoders']['reverse']['reconstruction'] = reconstruction(config, exp, params, x, y,
                                                                     guidance)
    if train_examples > 0:
      xt, yt = split_images(config, 'train', train_examples)
      result['decoders']['reverse']['reconstruction_train'] = reconstruction(
          config, exp, params, xt, yt, guidance)
  return result


def reconstruction(config, exp, params, x: np.ndarray, y: np.ndarray, guidance: float) -> dict:
  """G(F(x~), y) against x, and how much G's output moves between same-class latents."""
  flow, sigma = exp.models.flow, float(config.objective.noise_sigma)
  decode = jax.jit(sampling.make_decoder(config, 'reverse', 'none'), static_argnames='guidance')
  encode = jax.jit(lambda p, xt, yy: flow.apply({'params': p}, xt, yy)[0])
  rng = np.random.default_rng(SEED)
  noisy = (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)
  z = np.concatenate([np.asarray(encode(params['forward'], jnp.asarray(noisy[i:i + 250]),
                                        jnp.asarray(y[i:i + 250])))
                      for i in range(0, len(x), 250)])
  g = np.concatenate([np.asarray(decode(params, jnp.asarray(z[i:i + 250]),
                                        jnp.asarray(y[i:i + 250]), guidance=guidance))
                      for i in range(0, len(x), 250)])
  # Same-class pairs: each example with the next one of its class.
  a, b = [], []
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    a.extend(idx[:-1])
    b.extend(idx[1:])
  a, b = np.asarray(a), np.asarray(b)
  out_dist = np.sqrt(((g[a] - g[b]) ** 2).reshape(len(a), -1).sum(-1))
  in_dist = np.sqrt(((x[a] - x[b]) ** 2).reshape(len(a), -1).sum(-1))
  return {'mse': float(((g - x) ** 2).mean()), 'class_mean_mse': class_mean_mse(x, y),
          'swap_ratio': float(np.mean(out_dist / in_dist)),
          'examples': int(len(x)), 'pairs': int(len(a))}


def main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
  flags.DEFINE_string('workdir', None, 'A trained run.')
  flags.DEFINE_float('guidance', 0.0, 'Guidance w of both decoders.')
  flags.DEFINE_float('temperature', 1.0, 'Noise temperature t of both decoders.')
  flags.DEFINE_integer('per_class', 100, 'Samples per class.')
  flags.DEFINE_integer('train_examples', 0, 'Also reconstruct this many training digits '
                       '(0 = off): G memorised them if its MSE there is far below the '
                       "held-out one.", lower_bound=0)
  flags.DEFINE_string('out', '', 'JSON file to write (default: print only).')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run(_):
    f = flags.FLAGS
    console.setup(None)
    result = measure(f.config, f.workdir, f.guidance, f.temperature, f.per_class,
                     f.train_examples)
    result['command'] = ' '.join(['python -m biflow_jax.tools.z_sensitivity'] + sys.argv[1:])
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if f.out:
      with open(f.out, 'w') as fh:
        fh.write(text)

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
