"""The metrics of the ADM evaluation suite (openai/guided-diffusion, evaluations/evaluator.py)
with the pytorch-fid InceptionV3 port, accumulated batch by batch.

The suite scores a set of uint8 RGB images against a reference batch:
- FID: Frechet distance between Gaussians fitted (mean, ddof=1 covariance) to pool3
  features;
- sFID: the same on the spatial features (Mixed_6d's 1x1 branch, 7 channels, 2023-d);
- Inception Score: softmax of pool3 @ fc kernel (no bias), consecutive parts of 5,000,
  mean of the parts' scores (`metrics.inception_score_in_parts`);
- precision/recall: k-NN manifolds (k = 3) of the pool3 features of the reference images
  and of the samples (`metrics.precision_recall`).

Where this differs from the suite's numbers, and why:
- Features come from pytorch-fid's port of the same TF graph. Its input resize (bilinear,
  half-pixel centres) differs from the TF graph's own resize, so FID against statistics
  the suite computed (a reference file's `mu`/`sigma`) can differ slightly from the
  suite's own score. For exact parity, score the samples .npz with the suite itself.
- The suite rounds pairwise distances through float16 when they fit. Here they are exact
  float64, so a point right on a ball's boundary can count differently.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from biflow_jax.convert import inception as inception_convert
from biflow_jax.evaluation import fingerprint as fp, metrics
from biflow_jax.evaluation.moments import RunningMoments
from biflow_jax.models import inception

#: Rows per Inception Score part, and k of the k-NN manifolds, in the suite.
IS_PART_SIZE = 5000
PR_K = 3

#: Width of each feature `SuiteNet.fn` returns.
DIMS = {'pool': inception.POOL3_DIM, 'spatial': inception.SPATIAL_DIM,
        'logits_unbiased': inception.NUM_LOGITS}

SuiteFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class SuiteNet(NamedTuple):
  """`fn`: uint8 NHWC images (1 or 3 channels, any size) -> {'pool' (n, 2048),
  'spatial' (n, 2023), 'logits_unbiased' (n, 1008)} float32 (widths in `dims`);
  `fingerprint` names the weights by hash."""
  fn: SuiteFn
  fingerprint: dict[str, Any]
  dims: dict[str, int] = DIMS


def make_suite_net(weights: str | None, batch: int) -> SuiteNet:
  """The pytorch-fid InceptionV3 (weights file, or $BIFLOW_FID_WEIGHTS when None) run in
  jitted batches of `batch` images (the last one padded, so one shape compiles).

  Raises FileNotFoundError with where to get the weights when the file is missing.
  """
  if batch <= 0:
    raise ValueError(f'config.eval.batch must be positive, got {batch}')
  path = inception_convert.resolve_path(weights)
  variables = inception_convert.load_fid_inception(path)
  features = jax.jit(inception.suite_features)

  def run(images: np.ndarray) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'the suite scores uint8 NHWC images with 1 or 3 channels, got '
                       f'{images.dtype} {images.shape}')
    out: dict[str, list[np.ndarray]] = {'pool': [], 'spatial': [], 'logits_unbiased': []}
    for start in range(0, images.shape[0], batch):
      chunk = images[start:start + batch]
      n = chunk.shape[0]
      if n < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], np.uint8)])
      x = chunk.astype(np.float32) / 255.0
      if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
      result = features(variables, x)
      for k in out:
        out[k].append(np.asarray(result[k], np.float32)[:n])
    return {k: (np.concatenate(v) if v else np.zeros((0, DIMS[k]), np.float32))
            for k, v in out.items()}

  return SuiteNet(run, fp.canonical({
      'net': 'inception', 'weights_sha256': {path.name: fp.file_sha256(path)},
      'input': 'uint8 RGB / 255, pytorch-fid preprocessing (bilinear resize to 299, '
               'half-pixel centres)',
      'outputs': 'pool3; Mixed_6d.branch1x1[..., :7]; pool3 @ fc kernel (no bias)'}), DIMS)


class SuiteAccumulator:
  """What the suite's metrics need of one image set, batch by batch: running moments of
  the pool3 and spatial features, and the pool3 rows (precision/recall) and unbiased logits
  (Inception Score) as float32. Images are not kept."""

  def __init__(self, dims: dict[str, int] = DIMS):
    self.dims = dict(dims)
    self.pool = RunningMoments(self.dims['pool'])
    self.spatial = RunningMoments(self.dims['spatial'])
    self._pool_rows: list[np.ndarray] = []
    self._logits: list[np.ndarray] = []

  def update(self, features: dict[str, np.ndarray]) -> None:
    self.pool.update(features['pool'])
    self.spatial.update(features['spatial'])
    self._pool_rows.append(np.asarray(features['pool'], np.float32))
    self._logits.append(np.asarray(features['logits_unbiased'], np.float32))

  @property
  def count(self) -> int:
    return self.pool.count

  def pool_rows(self) -> np.ndarray:
    return np.concatenate(self._pool_rows) if self._pool_rows else np.zeros((0, self.dims['pool']))

  def logits(self) -> np.ndarray:
    return (np.concatenate(self._logits) if self._logits
            else np.zeros((0, self.dims['logits_unbiased'])))


class ReferenceStats(NamedTuple):
  """The reference side: FID and sFID Gaussians, and pool3 rows of the reference images for
  precision/recall (None when the reference file holds statistics only)."""
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: np.ndarray
  sigma_s: np.ndarray
  pool: np.ndarray | None


def suite_scores(samples: SuiteAccumulator, reference: ReferenceStats, k: int = PR_K,
                 part_size: int = IS_PART_SIZE) -> dict[str, Any]:
  """{'fid', 'sfid', 'inception_score', 'precision', 'recall', 'num_samples'} as the suite
  computes them; precision and recall are None (with 'precision_recall_note') when the
  reference has no images."""
  if samples.count < 2:
    raise ValueError(f'the suite needs at least 2 samples, got {samples.count}')
  mu, sigma = samples.pool.stats()
  mu_s, sigma_s = samples.spatial.stats()
  result: dict[str, Any] = {
      'fid': metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma),
      'sfid': metrics.frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s),
      'inception_score': metrics.inception_score_in_parts(samples.logits(), part_size),
      'num_samples': int(samples.count)}
  if reference.pool is None:
    result.update(precision=None, recall=None,
                  precision_recall_note='the reference file holds statistics only (no arr_0 '
                                        'images), so there are no reference manifolds')
  else:
    result['precision'], result['recall'] = metrics.precision_recall(
        reference.pool, samples.pool_rows(), k=k)
  return result
