"""Sample from an exported biflow_jax sampler with jax and numpy alone (no biflow_jax).

    python run_exported.py RUN/export/reverse --num=16 [--label=3] [--seed=0] --out=samples.npz

Reads `sampler.jaxexport`, `weights.npz` and `manifest.json` (written by `--mode=export`),
draws noise N(0, temperature^2 I) of the manifest's shape, calls the exported function
and writes uint8 images (N, H, W, C) as `images` and the labels as `labels` to --out.
This file imports nothing from biflow_jax on purpose: it is what you hand to someone.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np


def load(folder: str | Path):
  """(exported, weights list, manifest) from an export folder."""
  folder = Path(folder)
  manifest = json.loads((folder / 'manifest.json').read_text())
  exported = jax.export.deserialize(bytearray((folder / 'sampler.jaxexport').read_bytes()))
  with np.load(folder / 'weights.npz') as data:
    weights = [data[f'w{i:04d}'] for i in range(len(manifest['weights']))]
  return exported, weights, manifest


def sample(folder: str | Path, noise: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Float images in [-1, 1], (N, H, W, C), for given noise (N, T, D) and labels (N,)."""
  exported, weights, _ = load(folder)
  return np.asarray(exported.call(weights, np.asarray(noise, np.float32),
                                  np.asarray(labels, np.int32)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder')
  parser.add_argument('--num', type=int, default=16)
  parser.add_argument('--label', type=int, default=None,
                      help='class of every sample; default: classes in turn (or -1 if none)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='samples.npz')
  args = parser.parse_args(argv)
  exported, weights, manifest = load(args.folder)
  _, tokens, dim = manifest['noise_shape']
  rng = np.random.default_rng(args.seed)
  noise = manifest['temperature'] * rng.standard_normal((args.num, tokens, dim))
  classes = manifest['num_classes']
  if args.label is not None:
    labels = np.full((args.num,), args.label)
  else:
    labels = np.arange(args.num) % classes if classes else -np.ones((args.num,))
  images = np.asarray(exported.call(weights, noise.astype(np.float32), labels.astype(np.int32)))
  uint8 = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  np.savez(args.out, images=uint8, labels=labels.astype(np.int32))
  print(f'{manifest["decoder"]}: {uint8.shape} uint8 images -> {args.out}')


if __name__ == '__main__':
  main()
