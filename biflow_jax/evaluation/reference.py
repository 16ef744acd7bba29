"""A reference batch in the ADM evaluation suite's format (`config.eval.reference`).

The suite's reference files (e.g. `VIRTUAL_imagenet256_labeled.npz`) are an .npz with
- `arr_0`: uint8 (N, S, S, 3) reference images (10,000 for ImageNet), and/or
- `mu` (2048,), `sigma` (2048, 2048): FID statistics of pool3 features, and
  `mu_s` (2023,), `sigma_s` (2023, 2023): sFID statistics of spatial features.

As in the suite, statistics in the file are used when present, otherwise they are
computed from `arr_0`, and precision/recall need `arr_0`. `open_reference` checks the
file against this format and the model's image side before anything is sampled.
Features of `arr_0` are cached in DIR/eval_cache under the file's SHA-256 and the
Inception weights' hash.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from biflow_jax.evaluation import adm, cache, fingerprint as fp, npz_stream
from biflow_jax.evaluation.moments import RunningMoments
from biflow_jax.models import inception

IMAGES = 'arr_0'
STAT_SHAPES = {'mu': (inception.POOL3_DIM,),
               'sigma': (inception.POOL3_DIM, inception.POOL3_DIM),
               'mu_s': (inception.SPATIAL_DIM,),
               'sigma_s': (inception.SPATIAL_DIM, inception.SPATIAL_DIM)}
# Bumped when what the cache entry stores changes.
CACHE_VERSION = 1
FORMAT_HELP = ('an ADM-suite reference batch is an .npz with arr_0 (uint8 images, N x S x S '
               'x 3) and/or mu (2048,), sigma (2048, 2048), mu_s (2023,), sigma_s (2023, '
               '2023)')


@dataclasses.dataclass(frozen=True)
class Reference:
  """A checked reference file: how many images it holds (0 = statistics only)."""
  path: Path
  num_images: int
  image_side: int
  has_stats: bool
  sha256: str

  def describe(self) -> dict[str, Any]:
    return {'path': str(self.path), 'sha256': self.sha256, 'num_images': self.num_images,
            'image_side': self.image_side,
            'statistics': 'from the file (mu, sigma, mu_s, sigma_s)' if self.has_stats
                          else f'computed from its {self.num_images} images'}


def _error(path: Path, problem: str) -> ValueError:
  return ValueError(f'config.eval.reference={str(path)!r}: {problem}. Expected {FORMAT_HELP}.')


def open_reference(path: str | os.PathLike[str], image_side: int) -> Reference:
  """Checks `path` against the suite's format and the side of the images the model makes
  (`image_side`); one ValueError naming the file, the problem and the expected format.
  Reads only the arrays' headers (and hashes the file)."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise _error(path, 'no such file')
  try:
    names = npz_stream.array_names(path)
  except ValueError as err:
    raise _error(path, str(err)) from None
  stats = [k for k in STAT_SHAPES if k in names]
  if stats and len(stats) != len(STAT_SHAPES):
    missing = [k for k in STAT_SHAPES if k not in names]
    raise _error(path, f'it holds {stats} but not {missing}')
  if IMAGES not in names and not stats:
    raise _error(path, f'it holds neither images nor statistics (arrays: {names})')
  for name in stats:
    shape, dtype = npz_stream.read_header(path, name)
    if shape != STAT_SHAPES[name] or dtype.kind != 'f':
      raise _error(path, f'{name} is {dtype} {shape}, the pool3 / spatial features of the '
                         f'FID Inception need float {STAT_SHAPES[name]}')
  num_images = 0
  if IMAGES in names:
    shape, dtype = npz_stream.read_header(path, IMAGES)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
      raise _error(path, f'{IMAGES} is {dtype} {shape}, not uint8 RGB images (N, S, S, 3)')
    if shape[1:3] != (image_side, image_side):
      raise _error(path, f'its images are {shape[1]}x{shape[2]} but the model makes '
                         f'{image_side}x{image_side} images; use the reference batch of '
                         'this resolution')
    if shape[0] < adm.PR_K + 1:
      raise _error(path, f'{IMAGES} holds {shape[0]} images, too few for k={adm.PR_K} '
                         'nearest neighbours')
    num_images = int(shape[0])
  return Reference(path.resolve(), num_images, int(image_side), bool(stats),
                   fp.file_sha256(path))


def _file_stats(ref: Reference) -> dict[str, np.ndarray]:
  with np.load(ref.path) as data:
    stats = {k: np.asarray(data[k], np.float64) for k in STAT_SHAPES}
  bad = [k for k, v in stats.items() if not np.all(np.isfinite(v))]
  if bad:
    raise _error(ref.path, f'{bad} hold non-finite values')
  return stats


def reference_stats(ref: Reference, net: adm.SuiteNet, cache_dir: str | os.PathLike[str],
                    batch: int, progress=None) -> tuple[adm.ReferenceStats, dict[str, Any]]:
  """(stats, record): the reference's FID/sFID Gaussians (the file's when it has them, as
  the suite does) and the pool3 rows of its images, featurised in batches and cached.

  `progress` (optional) is called with the number of images featurised per batch.
  """
  record: dict[str, Any] = {'reference': ref.describe()}
  if ref.num_images == 0:
    stats = _file_stats(ref)
    return adm.ReferenceStats(pool=None, **stats), record
  key = {'what': 'ADM reference batch features', 'version': CACHE_VERSION,
         'file_sha256': ref.sha256, 'num_images': ref.num_images, 'net': net.fingerprint}

  def compute():
    pool, spatial, rows = (RunningMoments(net.dims['pool']),
                           RunningMoments(net.dims['spatial']), [])
    for images in npz_stream.iter_rows(ref.path, IMAGES, batch):
      features = net.fn(images)
      pool.update(features['pool'])
      spatial.update(features['spatial'])
      rows.append(features['pool'])
      if progress is not None:
        progress(images.shape[0])
    (mu, sigma), (mu_s, sigma_s) = pool.stats(), spatial.stats()
    arrays = {'pool': np.concatenate(rows), 'mu': mu, 'sigma': sigma, 'mu_s': mu_s,
              'sigma_s': sigma_s}
    return arrays, {}

  arrays, cache_record = cache.load_or_compute(cache_dir, 'reference', key, compute)
  record['cache'] = {k: cache_record[k] for k in ('file', 'key', 'recomputed', 'reason')}
  stats = _file_stats(ref) if ref.has_stats else {k: arrays[k] for k in STAT_SHAPES}
  return adm.ReferenceStats(pool=arrays['pool'], **stats), record
