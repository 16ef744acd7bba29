"""What ships inside the package, and how it is found and read.

This folder holds files, not code of its own beyond this module: the bundled MNIST test
split (`t10k-*.gz`) and the small networks the project trains and ships per dataset
(README.md here lists every file with its provenance).

May import: nothing of the package (the bottom layer, beside `runtime/`), so every layer
may use it.

Each dataset with offline evaluation ships `biflow_jax/assets/<name>_classifier.{npz,json}`
(the evaluation feature net: FD, class accuracy, precision/recall) and may ship
`<name>_feature_net.{npz,json}` (the network of G's feature term, never used by
evaluation). `<name>` is `config.data.name`, or, when that is '', the source's own name:
'mnist' for the bundled MNIST, the tfds name for tfds data. An explicit path
(`eval.classifier_path`, `perceptual.feature_net`) always wins.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ASSETS_DIR = Path(__file__).resolve().parent
KINDS = ('classifier', 'feature_net')
TOOLS = {'classifier': 'train_classifier', 'feature_net': 'train_feature_net'}


def dataset_name(config) -> str:
  """The dataset's name for its shipped assets: data.name, else from data.source."""
  name = str(config.data.get('name', '') or '')
  if name:
    return name
  if config.data.source == 'bundled_mnist':
    return 'mnist'
  if config.data.source == 'tfds':
    return str(config.data.tfds_name).split('/')[0]
  return ''


def shipped(config, kind: str) -> Path:
  """ASSETS_DIR/<dataset>_<kind>: the prefix of the dataset's shipped asset (it may not exist).

  Raises ValueError for an unknown kind, or when the dataset has no name (jpeg or latent
  data without config.data.name), saying which fields to set.
  """
  if kind not in KINDS:
    raise ValueError(f'asset kind {kind!r}; use one of {KINDS}')
  name = dataset_name(config)
  if not name:
    field = 'eval.classifier_path' if kind == 'classifier' else 'perceptual.feature_net'
    raise ValueError(f'config.data.source={config.data.source!r} does not name its dataset, so '
                     f'no shipped {kind} can be picked: set config.data.name (for example '
                     f"'cifar10') or give config.{field} (an asset made by "
                     f'`python -m biflow_jax.tools.{TOOLS[kind]}`)')
  return ASSETS_DIR / f'{name}_{kind}'


def available(kind: str) -> list[str]:
  """Dataset names with a shipped asset of `kind` (for error messages)."""
  suffix = f'_{kind}.npz'
  return sorted(p.name[:-len(suffix)] for p in ASSETS_DIR.glob(f'*{suffix}'))


# ------------------------------------------------------------- <prefix>.npz + <prefix>.json


def flatten_params(tree: Any, prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf} (leaves as they are): the .npz key layout."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if hasattr(value, 'items'):
      flat.update(flatten_params(value, name))
    else:
      flat[name] = value
  return flat


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': array} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def prefix_paths(path: str | Path | None, default_name: str) -> tuple[Path, Path]:
  """(<path>.npz, <path>.json) of a weights asset; ASSETS_DIR/<default_name> for None or ''."""
  base = Path(path) if path else ASSETS_DIR / default_name
  if base.suffix in ('.npz', '.json'):
    base = base.with_suffix('')
  return base.with_name(base.name + '.npz'), base.with_name(base.name + '.json')


def save_params(npz: Path, meta: Path, params: Any, info: dict[str, Any]) -> tuple[Path, Path]:
  """Writes `npz` (float32 params, '/'-joined keys) and `meta` (info as JSON)."""
  npz.parent.mkdir(parents=True, exist_ok=True)
  flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
  np.savez_compressed(npz, **flat)
  meta.write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
  return npz, meta
