"""Fingerprints: JSON records of everything a cached or derived evaluation file depends on.

A cache entry is reused only when its fingerprint equals today's, so a fingerprint names
each input precisely: weight files by the SHA-256 of their bytes (not their path or name),
data by its source, resolved path, split definition, example count and image geometry,
and for latent data the latent cache's manifest and the VAE decoder's weights. Reading a
fingerprint never decodes the data itself: file trees are fingerprinted by their listing
(relative names, sizes, modification times).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from biflow_jax.data import input_pipeline, latents
from biflow_jax.runtime import files

# (resolved path, size, mtime_ns) -> SHA-256, so one process hashes each file once.
_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
  """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (memoised per size and mtime).

  Raises FileNotFoundError naming the file when it does not exist.
  """
  path = Path(path).resolve()
  if not path.is_file():
    raise FileNotFoundError(f'cannot fingerprint {path}: no such file')
  stat = path.stat()
  memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
  if memo_key not in _SHA256_MEMO:
    _SHA256_MEMO[memo_key] = files.sha256(path)
  return _SHA256_MEMO[memo_key]


def listing_sha256(root: str | os.PathLike[str]) -> tuple[str, int]:
  """(hex SHA-256, file count) of a folder's listing: every file's path relative to `root`,
  size and mtime_ns, sorted. Any file added, removed, replaced or touched changes it."""
  root = Path(root)
  entries = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob('*') if p.is_file())
  return hashlib.sha256(json.dumps(entries).encode()).hexdigest(), len(entries)


def key(fingerprint: dict[str, Any]) -> str:
  """16 hex digits of the SHA-256 of the fingerprint's canonical JSON."""
  text = json.dumps(fingerprint, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical(value: Any) -> Any:
  """The value as it reads back from JSON (tuples -> lists), so fingerprints compare equal."""
  return json.loads(json.dumps(value, sort_keys=True))


def differences(old: Any, new: Any, prefix: str = '') -> list[str]:
  """'a.b: old -> new' for every leaf that differs between two JSON-like records."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      name = f'{prefix}.{k}' if prefix else str(k)
      if k not in old:
        out.append(f'{name}: (absent) -> {new[k]!r}')
      elif k not in new:
        out.append(f'{name}: {old[k]!r} -> (absent)')
      else:
        out += differences(old[k], new[k], name)
    return out
  return [] if old == new else [f'{prefix or "value"}: {old!r} -> {new!r}']


def _jpeg_fingerprint(path: str, split: str) -> dict[str, Any]:
  root = Path(path).resolve()
  if root.is_dir():
    listing, count = listing_sha256(root / split)
    return {'path': str(root), 'listing_sha256': listing, 'files': count}
  stat = root.stat()
  return {'path': str(root), 'bytes': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def _latent_fingerprint(config: ml_collections.ConfigDict, split: str) -> dict[str, Any]:
  root = Path(config.data.path).resolve()
  meta = root / split / latents.META
  if not meta.is_file():
    raise ValueError(f'no finished latent cache at {root / split} (config.data.path): '
                     f'{latents.META} is missing. Build it with '
                     f'`{latents.cache_command(config.data.path, split)}`.')
  vae = {k: v for k, v in config.vae.to_dict().items() if k != 'weights'}
  weights = config.vae.weights
  return {'path': str(root), 'meta_sha256': file_sha256(meta),
          'vae': canonical(vae),
          'vae_weights_sha256': file_sha256(weights) if weights else None}


def data_fingerprint(config: ml_collections.ConfigDict, part: str) -> dict[str, Any]:
  """What the examples of `part` ('train' | 'heldout') are, without decoding them.

  Source and split, the split definition (bundled MNIST: sizes, seed and the bundled files'
  hashes), where the data lives and its listing or manifest, the image geometry the model
  reads, and for latents the VAE that turns them into pixels.
  """
  if part not in ('train', 'heldout'):
    raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
  data, model = config.data, config.model
  split = data.train_split if part == 'train' else data.heldout_split
  record: dict[str, Any] = {
      'source': data.source, 'part': part,
      'image_shape': [int(model.image_size), int(model.image_size), int(model.in_channels)]}
  if data.source == 'bundled_mnist':
    record['split'] = {'num_train': int(data.num_train), 'num_heldout': int(data.num_heldout),
                       'seed': input_pipeline.BUNDLED_SPLIT_SEED}
    record['files_sha256'] = [
        file_sha256(input_pipeline.MNIST_DIR / name)
        for name in (input_pipeline.MNIST_IMAGES, input_pipeline.MNIST_LABELS)]
  elif data.source == 'jpeg':
    record['split'] = split
    record.update(_jpeg_fingerprint(data.path, split))
  elif data.source == 'latents':
    record['split'] = split
    record.update(_latent_fingerprint(config, split))
  elif data.source == 'tfds':
    source = input_pipeline.open_tfds_source(data.tfds_name, split, data.data_dir)
    info = getattr(source, 'dataset_info', None)
    record.update({'split': split, 'tfds_name': data.tfds_name,
                   'data_dir': str(Path(data.data_dir).resolve()) if data.data_dir else '',
                   'version': str(getattr(info, 'version', '')), 'num_examples': len(source)})
  else:
    raise ValueError(f'unknown config.data.source={data.source!r}; expected one of '
                     f'{input_pipeline.SOURCES}')
  return canonical(record)
