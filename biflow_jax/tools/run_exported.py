"""Sample from an exported biflow_jax sampler with jax and numpy alone (no biflow_jax).

    python run_exported.py RUN/export/reverse --num=16 [--label=3] [--seed=0] --out=samples.npz

Reads `sampler.jaxexport`, `weights.npz` and `manifest.json` (written by `--mode=export`),
draws noise N(0, temperature^2 I) of the manifest's shape, calls the exported function
and writes uint8 images (N, H, W, C) as `images` and the labels as `labels` to --out.
Arguments are checked against the manifest before anything runs: a label must be a
class of the model (0 .. num_classes - 1) or -1 for none (the exported function cannot
check it: a label past the classes picks another embedding row or reads NaN), --num
positive, --out an .npz, and this machine's platform one the sampler was exported for.
This file imports nothing from biflow_jax on purpose: it is what you hand to someone.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

FILES = ('manifest.json', 'sampler.jaxexport', 'weights.npz')


def load(folder: str | Path):
  """(exported, weights list, manifest) from an export folder.

  Raises ValueError naming what is missing or inconsistent (a file, a weight array, the
  noise shape the function takes).
  """
  folder = Path(folder)
  missing = [name for name in FILES if not (folder / name).is_file()]
  if missing:
    raise ValueError(f'{folder} is not an export folder (no {", ".join(missing)}): give '
                     'RUN/export/<decoder>, written by --mode=export')
  manifest = json.loads((folder / 'manifest.json').read_text())
  exported = jax.export.deserialize(bytearray((folder / 'sampler.jaxexport').read_bytes()))
  with np.load(folder / 'weights.npz') as data:
    names = [f'w{i:04d}' for i in range(len(manifest['weights']))]
    absent = [n for n in names if n not in data.files]
    if absent or len(data.files) != len(names):
      raise ValueError(f'{folder / "weights.npz"} holds {len(data.files)} arrays but the '
                       f'manifest lists {len(names)}: the folder mixes two exports; export again')
    weights = [data[n] for n in names]
  _, tokens, dim = manifest['noise_shape']
  noise_aval = exported.in_avals[len(weights)]
  if tuple(noise_aval.shape[1:]) != (tokens, dim):
    raise ValueError(f'{folder}: the sampler takes noise (B, {", ".join(map(str, noise_aval.shape[1:]))}) '
                     f'but the manifest says (B, {tokens}, {dim}); export again')
  return exported, weights, manifest


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int32 labels, each -1 (none) or in [0, num_classes); ValueError naming the first bad one."""
  labels = np.asarray(labels)
  if labels.dtype.kind not in 'iu':
    raise ValueError(f'labels must be integers, not {labels.dtype}')
  allowed = (f'in [0, {num_classes}) or -1 for none' if num_classes
             else '-1 (this sampler is unconditional: num_classes is 0)')
  bad = np.flatnonzero(~((labels == -1) | ((labels >= 0) & (labels < num_classes))))
  if bad.size:
    raise ValueError(f'label {int(labels.flat[bad[0]])} is not a class of this sampler: labels '
                     f'must be {allowed} (manifest num_classes={num_classes})')
  return labels.astype(np.int32)


def check_platform(exported) -> None:
  """ValueError when this machine's jax platform is not one the sampler was exported for."""
  here = jax.export.default_export_platform()
  if here not in exported.platforms:
    raise ValueError(f'the sampler was exported for {list(exported.platforms)} and this machine '
                     f"runs jax on '{here}': export it again with "
                     f'--config.export.platforms={",".join([*exported.platforms, here])}')


def sample(folder: str | Path, noise: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Float images in [-1, 1], (N, H, W, C), for given noise (N, T, D) and labels (N,).

  Raises ValueError for labels outside the manifest's classes or noise of another shape.
  """
  exported, weights, manifest = load(folder)
  check_platform(exported)
  labels = check_labels(labels, int(manifest['num_classes']))
  noise = np.asarray(noise, np.float32)
  _, tokens, dim = manifest['noise_shape']
  if noise.ndim != 3 or noise.shape[1:] != (tokens, dim) or labels.shape != noise.shape[:1]:
    raise ValueError(f'noise {noise.shape} and labels {labels.shape} must be (N, {tokens}, '
                     f'{dim}) and (N,)')
  return np.asarray(exported.call(weights, noise, labels))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder')
  parser.add_argument('--num', type=int, default=16)
  parser.add_argument('--label', type=int, default=None,
                      help='class of every sample, or -1 for none; default: classes in turn '
                           '(or -1 if none)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='samples.npz')
  args = parser.parse_args(argv)
  if args.num < 1:
    parser.error(f'--num={args.num} must be at least 1')
  if args.seed < 0:
    parser.error(f'--seed={args.seed} must be >= 0')
  if not args.out.endswith('.npz'):
    parser.error(f'--out={args.out} must end in .npz')
  try:
    exported, weights, manifest = load(args.folder)
    check_platform(exported)
    classes = int(manifest['num_classes'])
    if args.label is not None:
      labels = check_labels(np.full((args.num,), args.label), classes)
    else:
      labels = (np.arange(args.num) % classes if classes else -np.ones((args.num,))).astype(np.int32)
  except ValueError as e:
    parser.error(f'{e}' if args.label is None else f'--label={args.label}: {e}')
  _, tokens, dim = manifest['noise_shape']
  rng = np.random.default_rng(args.seed)
  noise = manifest['temperature'] * rng.standard_normal((args.num, tokens, dim))
  images = np.asarray(exported.call(weights, noise.astype(np.float32), labels))
  uint8 = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  np.savez(args.out, images=uint8, labels=labels)
  print(f'{manifest["decoder"]}: {uint8.shape} uint8 images -> {args.out}')


if __name__ == '__main__':
  main()
