"""Frechet distance, Inception Score and precision/recall against scipy references and
their defining properties."""
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special

from biflow_jax.evaluation import metrics


def scipy_frechet(mu1, s1, mu2, s2):
  covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def gaussian_features(rng, n, d, rank=None, scale=1.0, shift=0.0):
  if rank is None:
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix * scale + shift
  return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) * scale + shift


# --------------------------------------------------------------------- Frechet distance


def test_feature_stats_matches_numpy():
  f = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
  mu, sigma = metrics.feature_stats(f)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-10)
  with pytest.raises(ValueError, match='features must be'):
    metrics.feature_stats(np.zeros(5))


@pytest.mark.parametrize('n,d,rank', [
    (500, 16, None),
    (2000, 64, None),
    (40, 32, None),    # n < d: both sample covariances are singular (rank 39)
    (1000, 32, 10),    # low-rank features
])
def test_frechet_matches_scipy(n, d, rank):
  rng = np.random.default_rng(n + d)
  a = gaussian_features(rng, n, d, rank)
  b = gaussian_features(rng, n, d, rank, scale=1.3, shift=0.2)
  stats_a, stats_b = metrics.feature_stats(a), metrics.feature_stats(b)
  got = metrics.frechet_distance(*stats_a, *stats_b)
  want = scipy_frechet(*stats_a, *stats_b)
  assert isinstance(got, float)
  assert got == pytest.approx(want, rel=1e-6)
  # Symmetric in its two arguments.
  assert metrics.frechet_distance(*stats_b, *stats_a) == pytest.approx(got, rel=1e-9)


def test_frechet_closed_form_for_diagonal_covariances():
  # With commuting covariances the trace term is sum (sqrt(a) - sqrt(b))^2.
  va, vb = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 2.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
  want = 9.0 + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(va), mu2, np.diag(vb))
  assert got == pytest.approx(want, rel=1e-12)


def test_frechet_of_a_set_against_itself_is_zero_and_grows_with_noise():
  rng = np.random.default_rng(1)
  real = gaussian_features(rng, 2000, 32)
  stats = metrics.feature_stats(real)
  assert metrics.frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-9)
  noise = rng.normal(size=real.shape)
  distances = [metrics.frechet_distance_from_features(real, real + s * noise)
               for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
  assert distances[0] == pytest.approx(0.0, abs=1e-9)
  assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_frechet_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match='do not match'):
    metrics.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='feature dims differ'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match='non-finite'):
    metrics.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------- Inception Score


def test_inception_score_of_uniform_predictions_is_one():
  probs = np.full((1000, 10), 0.1)
  mean, std = metrics.inception_score(probs)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  mean, _ = metrics.inception_score(np.zeros((1000, 10)))  # equal logits
  assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_evenly_spread_predictions_is_num_classes():
  labels = np.arange(1000) % 10
  one_hot = np.eye(10)[labels]
  mean, std = metrics.inception_score(one_hot, splits=10)
  assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  mean, _ = metrics.inception_score(50.0 * one_hot)  # the same as confident logits
  assert mean == pytest.approx(10.0, rel=1e-9)
  # All confident in one class: as bad as uniform.
  mean, _ = metrics.inception_score(np.eye(10)[np.zeros(1000, int)])
  assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_reference_formula():
  rng = np.random.default_rng(2)
  logits = 3 * rng.normal(size=(999, 10))
  probs = scipy.special.softmax(logits, axis=1)
  scores = []
  for k in range(5):
    part = probs[k * 999 // 5:(k + 1) * 999 // 5]
    py = part.mean(0)
    scores.append(np.exp(np.mean(np.sum(scipy.special.rel_entr(part, py), axis=1))))
  got = metrics.inception_score(logits, splits=5)
  assert got == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)
  assert metrics.inception_score(probs, splits=5) == pytest.approx(got, rel=1e-10)
  assert metrics.inception_score(probs, splits=5, from_logits=False) == pytest.approx(got)
  with pytest.raises(ValueError, match='splits'):
    metrics.inception_score(probs, splits=1000)


# ------------------------------------------------------------------- precision / recall


def brute_precision_recall(real, fake, k):
  def radii(x):
    d = scipy.spatial.distance.cdist(x, x)
    return np.sort(d, axis=1)[:, k]
  def coverage(q, ref, r):
    return float(np.mean(np.any(scipy.spatial.distance.cdist(q, ref) <= r[None], axis=1)))
  return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_of_identical_sets_is_one():
  real = np.random.default_rng(3).normal(size=(500, 16))
  assert metrics.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)


def test_precision_drops_as_fakes_move_away():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(600, 8))
  fake = rng.normal(size=(600, 8))
  precisions = []
  direction = np.eye(8)[0]
  for shift in (0.0, 1.0, 2.0, 3.0, 20.0):
    precision, _ = metrics.precision_recall(real, fake + shift * direction, k=3)
    precisions.append(precision)
  assert precisions[0] > 0.8
  assert all(a > b for a, b in zip(precisions, precisions[1:])), precisions
  assert precisions[-1] == 0.0
  # Moving half the fakes far away halves precision and keeps most of recall.
  moved = fake.copy()
  moved[::2] += 100.0
  precision, recall = metrics.precision_recall(real, moved, k=3)
  ref_precision, _ = metrics.precision_recall(real, fake[1::2], k=3)
  assert precision == pytest.approx(0.5 * ref_precision, abs=1e-12)
  assert recall > 0.8


def test_recall_drops_when_fakes_collapse():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(600, 8))
  collapsed = 0.05 * rng.normal(size=(600, 8))  # all fakes near the mode: precise, no recall
  precision, recall = metrics.precision_recall(real, collapsed, k=3)
  assert precision > 0.95 and recall < 0.1


def test_precision_recall_matches_brute_force_with_small_blocks(monkeypatch):
  rng = np.random.default_rng(6)
  real = rng.normal(size=(300, 5))
  fake = 1.2 * rng.normal(size=(250, 5)) + 0.3
  want = brute_precision_recall(real, fake, k=4)
  assert metrics.precision_recall(real, fake, k=4) == pytest.approx(want, abs=1e-12)
  monkeypatch.setattr(metrics, '_BLOCK_ELEMENTS', 1000)  # blocks of 3-4 rows
  assert metrics.precision_recall(real, fake, k=4) == pytest.approx(want, abs=1e-12)
  radii = np.sqrt(metrics.knn_radii(real, 4))
  d = scipy.spatial.distance.cdist(real, real)
  np.testing.assert_allclose(radii, np.sort(d, axis=1)[:, 4], rtol=1e-7)


def test_precision_recall_rejects_bad_inputs():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match='k=10'):
    metrics.precision_recall(x, x, k=10)
  with pytest.raises(ValueError, match='equal d'):
    metrics.precision_recall(x, np.zeros((10, 4)))
