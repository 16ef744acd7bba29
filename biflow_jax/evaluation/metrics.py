"""Sample-quality metrics on feature vectors: Frechet distance, Inception Score, and
improved precision/recall (Kynkaanniemi et al., 2019).

Everything is float64 numpy on the host (no scipy): the inputs are feature matrices of
at most tens of thousands of rows, so a feature net (e.g. `evaluation.classifier`) does
the device work and these reductions are cheap. Pairwise distances are computed in row
blocks so memory stays bounded for any number of samples.
"""
from __future__ import annotations

import numpy as np

# Rows x columns of one block of pairwise squared distances (80 MB of float64).
_BLOCK_ELEMENTS = 10_000_000


# --------------------------------------------------------------------- Frechet distance


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean (d,), covariance (d, d)) of an (n, d) feature matrix, float64, ddof=1."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'features must be (n >= 2, d), got shape {f.shape}')
  mu = f.mean(axis=0)
  centred = f - mu
  sigma = centred.T @ centred / (f.shape[0] - 1)
  return mu, sigma


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; roundoff-negative eigenvalues -> 0."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_moments(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'{name}: mean {mu.shape} and covariance {sigma.shape} do not match '
                     '(expected (d,) and (d, d))')
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f'{name}: mean or covariance has non-finite entries')
  return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(s1 + s2 - 2 (s1 s2)^{1/2}) between two Gaussians (the FID formula).

  Tr (s1 s2)^{1/2} is the sum of the square roots of the eigenvalues of s1 s2, which are
  those of the symmetric PSD matrix s1^{1/2} s2 s1^{1/2} (AB and BA share their non-zero
  eigenvalues). Both square roots come from `eigh`, so singular (rank-deficient)
  covariances need no epsilon offset and give no complex parts, unlike `sqrtm(s1 @ s2)`.
  The result is clipped at 0 (a squared distance; roundoff can make it ~ -1e-12).
  """
  mu1, sigma1 = _check_moments(mu1, sigma1, 'first distribution')
  mu2, sigma2 = _check_moments(mu2, sigma2, 'second distribution')
  if mu1.shape != mu2.shape:
    raise ValueError(f'feature dims differ: {mu1.shape[0]} vs {mu2.shape[0]}')
  root1 = _psd_sqrt(sigma1)
  m = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(fd, 0.0))


def frechet_distance_from_features(features1, features2) -> float:
  """Frechet distance between the Gaussians fitted to two (n, d) feature matrices."""
  return frechet_distance(*feature_stats(features1), *feature_stats(features2))


# ---------------------------------------------------------------------- Inception Score


def _looks_like_probs(x: np.ndarray) -> bool:
  return bool(np.all(x >= 0) and np.all(x <= 1)
              and np.allclose(x.sum(axis=1), 1.0, rtol=0, atol=1e-4))


def inception_score(logits_or_probs, splits: int = 10, *,
                    from_logits: bool | None = None) -> tuple[float, float]:
  """(mean, std) over `splits` consecutive parts of exp(E_x KL(p(y|x) || p(y))).

  Input is (n, classes) logits or probabilities; by default rows that are non-negative,
  at most 1 and sum to 1 are taken as probabilities, anything else as logits (force
  either with `from_logits`). The split/std convention is that of Salimans et al.
  (parts k*n//splits .. (k+1)*n//splits, population std). Ranges from 1 (every
  prediction equal) to the number of classes (confident and evenly spread).
  """
  x = np.asarray(logits_or_probs, np.float64)
  if x.ndim != 2 or x.shape[1] < 1:
    raise ValueError(f'expected (n, classes) logits or probabilities, got {x.shape}')
  n = x.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f'splits={splits} must be in [1, n={n}]')
  if from_logits is None:
    from_logits = not _looks_like_probs(x)
  if from_logits:
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
  else:
    if np.any(x < 0):
      raise ValueError('probabilities must be non-negative')
    p = x / x.sum(axis=1, keepdims=True)
  scores = []
  for k in range(splits):
    part = p[k * n // splits:(k + 1) * n // splits]
    py = part.mean(axis=0, keepdims=True)
    # p log(p / py) with 0 log 0 = 0; py > 0 wherever p > 0.
    safe = part > 0
    ratio = np.where(safe, part, 1.0) / np.where(safe, py, 1.0)
    kl = np.sum(np.where(safe, part * np.log(ratio), 0.0), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def inception_score_in_parts(logits, part_size: int = 5000) -> float:
  """The Inception Score as the ADM evaluation suite computes it (no std).

  `logits` (n, classes): the suite takes a softmax of pool3 @ fc kernel (the fc layer
  *without* its bias: `inception.suite_features`' 'logits_unbiased'). The rows are cut
  into consecutive parts of `part_size` (the last may be shorter); each part scores
  exp(mean_x KL(p(y|x) || mean_x p(y|x))), and the result is the mean over parts. Where
  a probability is exactly 0 its term counts 0 (0 log 0 = 0; the suite would give nan).
  """
  x = np.asarray(logits, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f'expected (n >= 1, classes) logits, got {x.shape}')
  if part_size <= 0:
    raise ValueError(f'part_size must be positive, got {part_size}')
  z = x - x.max(axis=1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(axis=1, keepdims=True)
  scores = []
  for start in range(0, p.shape[0], part_size):
    part = p[start:start + part_size]
    py = part.mean(axis=0, keepdims=True)
    safe = part > 0
    ratio = np.where(safe, part, 1.0) / np.where(safe, py, 1.0)
    kl = np.sum(np.where(safe, part * np.log(ratio), 0.0), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores))


# ------------------------------------------------------------------- precision / recall


def _sq_norms(x: np.ndarray) -> np.ndarray:
  return np.einsum('ij,ij->i', x, x)


def _block_rows(num_cols: int) -> int:
  return max(1, _BLOCK_ELEMENTS // max(num_cols, 1))


def _sq_dists(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
  return np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def knn_radii(features, k: int = 3) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row (the manifold radii)."""
  f = np.asarray(features, np.float64)
  n = f.shape[0]
  if not 1 <= k < n:
    raise ValueError(f'k={k} must be in [1, n) for n={n} feature vectors')
  f_sq = _sq_norms(f)
  radii = np.empty(n)
  step = _block_rows(n)
  for start in range(0, n, step):
    d = _sq_dists(f[start:start + step], f_sq[start:start + step], f, f_sq)
    # Index 0 of each sorted row is the point itself (distance ~0), so index k is the
    # k-th nearest *other* point.
    radii[start:start + step] = np.partition(d, k, axis=1)[:, k]
  return radii


def manifold_coverage(queries, reference, reference_radii) -> float:
  """Fraction of query rows inside the union of balls around the reference rows."""
  q = np.asarray(queries, np.float64)
  r = np.asarray(reference, np.float64)
  q_sq, r_sq = _sq_norms(q), _sq_norms(r)
  inside = 0
  step = _block_rows(r.shape[0])
  for start in range(0, q.shape[0], step):
    d = _sq_dists(q[start:start + step], q_sq[start:start + step], r, r_sq)
    inside += int(np.count_nonzero(np.any(d <= reference_radii[None, :], axis=1)))
  return inside / q.shape[0]


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al., 2019) of fakes against reals.

  Each set's manifold is the union of balls around its points with radius the distance
  to the k-th nearest neighbour in the same set. Precision: the fraction of fakes inside
  the real manifold (fidelity). Recall: the fraction of reals inside the fake manifold
  (coverage). Euclidean distances in float64, in row blocks.
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f'expected (n, d) real and fake features with equal d, got '
                     f'{real.shape} and {fake.shape}')
  precision = manifold_coverage(fake, real, knn_radii(real, k))
  recall = manifold_coverage(real, fake, knn_radii(fake, k))
  return precision, recall
