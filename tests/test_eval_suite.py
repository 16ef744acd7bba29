"""The ADM evaluation suite's protocol: our metrics against a numpy/scipy re-implementation of
the suite's formulas (openai/guided-diffusion evaluations/evaluator.py) on fixed arrays,
streaming statistics, the .npz format both ways, and reference files checked up front."""
import numpy as np
import pytest
import scipy.linalg

from biflow_jax.evaluation import adm, metrics, npz_stream, progress, reference as reference_lib
from biflow_jax.evaluation.moments import RunningMoments
from biflow_jax.models import inception


# ------------------------------------------ the suite's formulas, re-implemented here


def suite_statistics(acts):
  """The suite's compute_statistics: np.mean and np.cov(rowvar=False) of the activations."""
  return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


def suite_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """The suite's FIDStatistics.frechet_distance: scipy sqrtm of the product, an eps offset
  if it is not finite, the real part."""
  diff = mu1 - mu2
  covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def suite_inception_score(pool, fc_kernel, split_size=5000):
  """The suite's compute_inception_score: softmax of pool @ W (no bias), consecutive parts."""
  logits = pool.astype(np.float64) @ fc_kernel.astype(np.float64)
  logits -= logits.max(axis=1, keepdims=True)
  preds = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


def suite_pairwise(u, v):
  """The suite's _batch_pairwise_distances: squared distances from norms and a matmul."""
  norm_u = np.sum(np.square(u), 1).reshape(-1, 1)
  norm_v = np.sum(np.square(v), 1).reshape(1, -1)
  return np.maximum(norm_u - 2 * u @ v.T + norm_v, 0.0)


def suite_precision_recall(ref, sample, k=3, row=97, col=89):
  """The suite's ManifoldEstimator (float32 distances; the suite's float16 pass omitted),
  with small row/column blocks so the blocking is exercised."""
  def radii(feats):
    out = np.zeros([len(feats), 1], np.float32)
    for b1 in range(0, len(feats), row):
      d = np.zeros([min(row, len(feats) - b1), len(feats)], np.float32)
      for b2 in range(0, len(feats), col):
        d[:, b2:b2 + col] = suite_pairwise(feats[b1:b1 + row], feats[b2:b2 + col])
      out[b1:b1 + row, 0] = np.partition(d, np.arange(k + 1), axis=1)[:, k]
    return out

  r1, r2 = radii(ref), radii(sample)
  status1 = np.zeros([len(ref), 1], bool)
  status2 = np.zeros([len(sample), 1], bool)
  for b1 in range(0, len(ref), row):
    for b2 in range(0, len(sample), col):
      d = suite_pairwise(ref[b1:b1 + row], sample[b2:b2 + col])[..., None]
      status1[b1:b1 + row] |= np.any(d <= r2[b2:b2 + col], axis=1)
      status2[b2:b2 + col] |= np.any(d <= r1[b1:b1 + row][:, None], axis=0)
  return float(status2.mean()), float(status1.mean())


@pytest.fixture(scope='module')
def activations():
  rng = np.random.default_rng(17)
  d = 48
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  real = np.abs(rng.normal(size=(700, d)) @ mix).astype(np.float32)  # post-ReLU-like
  fake = np.abs(1.2 * rng.normal(size=(600, d)) @ mix + 0.1).astype(np.float32)
  return real, fake


def test_frechet_distance_matches_the_suite(activations):
  real, fake = activations
  want = suite_frechet(*suite_statistics(fake), *suite_statistics(real))
  got_batch = metrics.frechet_distance(*metrics.feature_stats(fake), *metrics.feature_stats(real))
  streamed = RunningMoments(real.shape[1])
  for start in (0, 7, 250, 251, 599):  # uneven batches
    streamed.update(fake[start:{0: 7, 7: 250, 250: 251, 251: 599, 599: 600}[start]])
  got_stream = metrics.frechet_distance(*streamed.stats(), *suite_statistics(real))
  assert want > 1.0
  assert got_batch == pytest.approx(want, rel=1e-6)
  assert got_stream == pytest.approx(want, rel=1e-6)


def test_inception_score_matches_the_suite():
  rng = np.random.default_rng(3)
  pool = np.abs(rng.normal(size=(12_000, 32))).astype(np.float32)
  kernel = rng.normal(size=(32, 1008)).astype(np.float32)
  want = suite_inception_score(pool, kernel)  # parts of 5000, 5000 and 2000 rows
  got = metrics.inception_score_in_parts(pool.astype(np.float64) @ kernel.astype(np.float64))
  assert 1.0 < want < 1008
  assert got == pytest.approx(want, rel=1e-6)
  # One part when there are fewer rows than a part.
  assert metrics.inception_score_in_parts(pool[:100] @ kernel) == pytest.approx(
      suite_inception_score(pool[:100], kernel), rel=1e-6)


def test_precision_recall_matches_the_suite(activations):
  real, fake = activations
  want = suite_precision_recall(real, fake, k=3)
  got = metrics.precision_recall(real, fake, k=3)
  assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95  # neither trivially 0 nor 1
  assert got == pytest.approx(want, rel=1e-6)


def test_running_moments_equal_numpy_in_any_grouping():
  rng = np.random.default_rng(5)
  x = rng.normal(loc=1e3, scale=1.0, size=(1000, 6))  # a large mean: sums of squares would cancel
  a, b = RunningMoments(6), RunningMoments(6)
  for start in range(0, 1000, 137):
    a.update(x[start:start + 137])
  b.update(x[:10]).merge(RunningMoments(6).update(x[10:600])).merge(
      RunningMoments(6).update(x[600:]))
  for moments in (a, b):
    assert moments.count == 1000
    np.testing.assert_allclose(moments.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(moments.covariance(), np.cov(x, rowvar=False), rtol=1e-9)
  with pytest.raises(ValueError, match=r'expected \(n, 6\)'):
    a.update(np.zeros((3, 5)))
  with pytest.raises(ValueError, match='at least 2'):
    RunningMoments(2).update(np.zeros((1, 2))).covariance()


def test_suite_scores_of_a_set_against_itself():
  # Small widths keep the eigendecompositions cheap; the code is the same at 2048 / 2023.
  dims = {'pool': 24, 'spatial': 20, 'logits_unbiased': 10}
  rng = np.random.default_rng(8)
  feats = {k: np.abs(rng.normal(size=(40, d))).astype(np.float32) for k, d in dims.items()}
  acc = adm.SuiteAccumulator(dims)
  acc.update({k: v[:15] for k, v in feats.items()})
  acc.update({k: v[15:] for k, v in feats.items()})
  mu, sigma = metrics.feature_stats(feats['pool'])
  mu_s, sigma_s = metrics.feature_stats(feats['spatial'])
  ref = adm.ReferenceStats(mu, sigma, mu_s, sigma_s, feats['pool'])
  scores = adm.suite_scores(acc, ref)
  assert scores['fid'] == pytest.approx(0.0, abs=1e-9)
  assert scores['sfid'] == pytest.approx(0.0, abs=1e-9)
  assert (scores['precision'], scores['recall'], scores['num_samples']) == (1.0, 1.0, 40)
  assert scores['inception_score'] == pytest.approx(
      metrics.inception_score_in_parts(feats['logits_unbiased']), rel=1e-12)
  # Against another set: exactly the suite's formulas on the same rows.
  other = np.abs(rng.normal(size=(50, dims['pool'])) + 0.3).astype(np.float32)
  ref = adm.ReferenceStats(*suite_statistics(other), mu_s, sigma_s, other)
  scores = adm.suite_scores(acc, ref)
  assert scores['fid'] == pytest.approx(
      suite_frechet(*suite_statistics(feats['pool']), *suite_statistics(other)), rel=1e-6)
  assert (scores['precision'], scores['recall']) == pytest.approx(
      suite_precision_recall(other, feats['pool']), rel=1e-6)
  scores = adm.suite_scores(acc, ref._replace(pool=None))
  assert scores['precision'] is None and 'statistics only' in scores['precision_recall_note']


# ---------------------------------------------------------------------- .npz streaming


def test_npz_writer_and_reader_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(25, 8, 8, 3), dtype=np.uint8)
  path = tmp_path / 'samples.npz'
  with npz_stream.NpzWriter(path, images.shape, np.uint8) as writer:
    for start in range(0, 25, 10):
      writer.append(images[start:start + 10])
    writer.extra['arr_1'] = np.arange(25)
  with np.load(path) as data:  # what the suite and np.load read
    np.testing.assert_array_equal(data['arr_0'], images)
    np.testing.assert_array_equal(data['arr_1'], np.arange(25))
  assert npz_stream.read_header(path, 'arr_0') == ((25, 8, 8, 3), np.dtype(np.uint8))
  rows = list(npz_stream.iter_rows(path, 'arr_0', 7))
  assert [len(r) for r in rows] == [7, 7, 7, 4]
  np.testing.assert_array_equal(np.concatenate(rows), images)
  assert sum(len(r) for r in npz_stream.iter_rows(path, 'arr_0', 7, stop=10)) == 10
  with pytest.raises(ValueError, match="no array 'arr_2'"):
    npz_stream.read_header(path, 'arr_2')


def test_npz_writer_leaves_nothing_when_incomplete(tmp_path):
  path = tmp_path / 'short.npz'
  with pytest.raises(ValueError, match='3 rows written, 5 declared'):
    with npz_stream.NpzWriter(path, (5, 2, 2, 3), np.uint8) as writer:
      writer.append(np.zeros((3, 2, 2, 3), np.uint8))
  assert not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match='rows must be uint8'):
    with npz_stream.NpzWriter(path, (5, 2, 2, 3), np.uint8) as writer:
      writer.append(np.zeros((3, 2, 2, 3), np.float32))
  assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------- reference files


def suite_stats_arrays(rng, pool_dim=inception.POOL3_DIM, spatial_dim=inception.SPATIAL_DIM):
  return {'mu': rng.normal(size=pool_dim), 'sigma': np.eye(pool_dim),
          'mu_s': rng.normal(size=spatial_dim), 'sigma_s': np.eye(spatial_dim)}


def test_reference_files_of_the_suite_are_accepted(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(6, 28, 28, 3), dtype=np.uint8)
  np.savez(tmp_path / 'images.npz', images)  # np.savez names it arr_0, as the suite does
  np.savez(tmp_path / 'stats.npz', **suite_stats_arrays(rng))
  np.savez(tmp_path / 'both.npz', images, **suite_stats_arrays(rng))
  ref = reference_lib.open_reference(tmp_path / 'images.npz', 28)
  assert (ref.num_images, ref.has_stats, ref.image_side) == (6, False, 28)
  ref = reference_lib.open_reference(tmp_path / 'stats.npz', 28)
  assert (ref.num_images, ref.has_stats) == (0, True)
  assert 'from the file' in ref.describe()['statistics']
  ref = reference_lib.open_reference(tmp_path / 'both.npz', 28)
  assert (ref.num_images, ref.has_stats) == (6, True)


@pytest.mark.parametrize('make,message', [
    (lambda p, rng: p.write_text('not a zip'), 'not an .npz file'),
    (lambda p, rng: None, 'no such file'),
    (lambda p, rng: np.savez(p, mu=np.zeros(2048)), r"holds \['mu'\] but not \['sigma', 'mu_s', "),
    (lambda p, rng: np.savez(p, **{**suite_stats_arrays(rng), 'sigma': np.eye(2047)}),
     r'sigma is float64 \(2047, 2047\).*need float \(2048, 2048\)'),
    (lambda p, rng: np.savez(p, **{**suite_stats_arrays(rng), 'mu_s': np.zeros(2048)}),
     r'mu_s is float64 \(2048,\).*\(2023,\)'),
    (lambda p, rng: np.savez(p, np.zeros((6, 28, 28, 3), np.float32)), 'not uint8 RGB'),
    (lambda p, rng: np.savez(p, np.zeros((6, 28, 28, 1), np.uint8)), 'not uint8 RGB'),
    (lambda p, rng: np.savez(p, np.zeros((6, 32, 32, 3), np.uint8)),
     'images are 32x32 but the model makes 28x28'),
    (lambda p, rng: np.savez(p, np.zeros((3, 28, 28, 3), np.uint8)), 'too few'),
    (lambda p, rng: np.savez(p, labels=np.zeros(3)), 'neither images nor statistics'),
])
def test_bad_reference_files_are_one_clear_error(tmp_path, make, message):
  path = tmp_path / 'ref.npz'
  make(path, np.random.default_rng(0))
  with pytest.raises(ValueError, match=message) as err:
    reference_lib.open_reference(path, 28)
  assert str(path) in str(err.value) and 'ADM-suite reference batch' in str(err.value)


# ---------------------------------------------------------------------------- progress


def test_progress_logs_rate_and_eta():
  now = [0.0]
  lines = []
  meter = progress.Progress('eval reverse', 50_000, every_seconds=30, clock=lambda: now[0],
                            log=lambda fmt, text: lines.append(text))
  now[0] = 10.0
  meter.update(5_000)  # not due yet
  now[0] = 40.0
  meter.update(15_000)
  assert lines == ['eval reverse: 20,000/50,000 (40%), 500.0/s, elapsed 40s, ETA 1m00s']
  now[0] = 100.0
  meter.update(30_000)  # the end is always logged
  assert lines[-1] == 'eval reverse: 50,000/50,000 (100%), 500.0/s, elapsed 1m40s, ETA 0s'
  assert progress.format_seconds(3725) == '1h02m05s'
