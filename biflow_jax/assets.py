"""The small networks the project ships per dataset, found from the config.

Each dataset with offline evaluation ships `biflow_jax/data/<name>_classifier.{npz,json}`
(the evaluation feature net: FD, class accuracy, precision/recall) and may ship
`<name>_feature_net.{npz,json}` (the network of G's feature term, never used by
evaluation). `<name>` is `config.data.name`, or, when that is '', the source's own name:
'mnist' for the bundled MNIST, the tfds name for tfds data. An explicit path
(`eval.classifier_path`, `perceptual.feature_net`) always wins.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / 'data'
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
  """DATA_DIR/<dataset>_<kind>: the prefix of the dataset's shipped asset (it may not exist).

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
  return DATA_DIR / f'{name}_{kind}'


def available(kind: str) -> list[str]:
  """Dataset names with a shipped asset of `kind` (for error messages)."""
  suffix = f'_{kind}.npz'
  return sorted(p.name[:-len(suffix)] for p in DATA_DIR.glob(f'*{suffix}'))
