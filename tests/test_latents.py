"""The latent cache: record format, ADM crop, sharded/resumable/multi-process writing with a
real (tiny, random) AutoencoderKL, the reader and gather, and the CLI on a mocked tfds
ImageNet. No network, no real weights."""
import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.data import input_pipeline, latents
from biflow_jax.models.vae import AutoencoderKL
from biflow_jax.objective import biflow
from subprocess_util import python

REPO = Path(__file__).resolve().parents[1]
SIZE = 16           # pixels; the tiny VAE downsamples by 2 -> 8x8x4 latents
LATENT = (8, 8, 4)
NUM_IMAGES = 14
PER_SHARD = 4       # -> shards of 4, 4, 4, 2 images
BATCH = 6           # 3 images + mirrors per call: shards end on padded calls
SCALING = 0.18215
TINY_VAE = dict(in_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, dtype='float32', image_size=SIZE,
                scaling_factor=SCALING, weights='/somewhere/tiny.safetensors')


def tiny_vae():
  """A real AutoencoderKL with random encoder params (the CLI test's loader builds the same).

  Params are drawn with numpy into jax.eval_shape's structure: flax's eager init would
  compile each initialiser op, ~5 s on a busy CPU, for nothing the cache depends on.
  """
  model = AutoencoderKL.from_config(TINY_VAE)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), method=AutoencoderKL.encode))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, fan_in ** -0.5, leaf.shape).astype(np.float32)
    return (float('scale' in name) + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)['params']


@pytest.fixture(scope='module')
def encode_fn():
  return latents.make_vae_encode_fn(*tiny_vae())


@pytest.fixture(scope='module')
def images():
  """Random-sized RGB and grayscale images, labels in [0, 10)."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(NUM_IMAGES):
    h, w = rng.integers(10, 48, size=2)
    shape = (h, w) if i % 5 == 3 else (h, w, 3)
    out.append({'image': rng.integers(0, 256, shape, dtype=np.uint8),
                'label': int(rng.integers(0, 10))})
  return out


def write(images, out, encode_fn, **kw):
  args = dict(split='train', image_size=SIZE, scaling_factor=SCALING,
              info={'source': {'tfds_name': 'fake', 'split': 'train'},
                    'vae': latents.vae_info(TINY_VAE)},
              batch_size=BATCH, examples_per_shard=PER_SHARD, num_threads=2)
  return latents.write_cache(images, out, encode_fn, **(args | kw))


def files(directory):
  return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


@pytest.fixture(scope='module')
def cache(images, encode_fn, tmp_path_factory):
  out = tmp_path_factory.mktemp('cache')
  summary = write(images, out, encode_fn)
  assert summary['meta_written'] and summary['written'] == 4 and summary['skipped'] == 0
  return out


# ----------------------------------------------------------------------- preprocessing


def test_center_crop():
  rng = np.random.default_rng(1)
  same = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  np.testing.assert_array_equal(latents.center_crop(same, SIZE), same)
  for shape in [(100, 40, 3), (7, 9, 3), (30, 30), (20, 50, 1), (64, 64, 4)]:
    out = latents.center_crop(rng.integers(0, 256, shape, dtype=np.uint8), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
  flat = np.full((90, 200, 3), 77, np.uint8)  # box halving + bicubic keep a flat image flat
  np.testing.assert_array_equal(latents.center_crop(flat, SIZE), 77)
  # A wide image keeps its centre: the left/right thirds are cut away.
  wide = np.zeros((SIZE, 3 * SIZE, 3), np.uint8)
  wide[:, SIZE:2 * SIZE] = 200
  np.testing.assert_array_equal(latents.center_crop(wide, SIZE), 200)
  with pytest.raises(ValueError, match='uint8'):
    latents.center_crop(np.zeros((8, 8, 3), np.float32), SIZE)


# ---------------------------------------------------------------------------- records


@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_record_roundtrip(dtype):
  rng = np.random.default_rng(2)
  mean, std = rng.normal(size=(2,) + LATENT).astype(dtype)
  data = latents.encode_record(mean, std, label=7, flip=True, index=123456789012)
  assert len(data) == 24 + 2 * mean.nbytes
  r = latents.decode_record(data)
  np.testing.assert_array_equal(r['latent_mean'], mean)
  np.testing.assert_array_equal(r['latent_std'], std)
  assert (r['label'], r['flip'], r['index']) == (7, True, 123456789012)
  assert r['latent_mean'].dtype == dtype
  with pytest.raises(ValueError, match='truncated'):
    latents.decode_record(data[:-2])
  with pytest.raises(ValueError, match='not a latent record'):
    latents.decode_record(b'XXXX' + data[4:])
  with pytest.raises(ValueError, match='stored as'):
    latents.encode_record(mean.astype(np.float64), std.astype(np.float64), label=0, flip=0,
                          index=0)


def test_shard_bounds():
  assert latents.shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
  assert latents.shard_bounds(3, 8) == [(0, 3)]
  with pytest.raises(ValueError, match='nothing to cache'):
    latents.shard_bounds(0, 4)


# ----------------------------------------------------------------------------- writing


def test_cache_contents(cache, images, encode_fn):
  directory = cache / 'train'
  names = sorted(os.listdir(directory))
  assert names == sorted(['meta.json'] +
      [f'latents-{s:05d}-of-00004{ext}' for s in range(4) for ext in ('.array_record', '.done')])
  source = latents.open_latent_source(cache, 'train')
  assert len(source) == 2 * NUM_IMAGES
  assert source.latent_shape == LATENT and source.scaling_factor == SCALING
  meta = source.meta
  assert meta['num_records'] == 2 * NUM_IMAGES and meta['num_shards'] == 4
  assert meta['settings']['vae']['weights'] == 'tiny.safetensors'
  assert meta['settings']['vae']['block_out_channels'] == [8, 8]
  assert [s['num_records'] for s in meta['shards']] == [8, 8, 8, 4]
  assert all(s['complete'] for s in meta['shards'])

  # encode_fn on the cropped images and their mirrors, called as the writer calls it (XLA
  # may round differently for another batch size): each shard's images in padded calls.
  cropped = np.stack([latents.center_crop(x['image'], SIZE) for x in images])
  both = np.stack([cropped, cropped[:, :, ::-1]], axis=1).reshape((-1, SIZE, SIZE, 3))
  want_mean, want_std = [], []
  for start, stop in latents.shard_bounds(NUM_IMAGES, PER_SHARD):
    for a in range(2 * start, 2 * stop, BATCH):
      chunk = both[a:min(a + BATCH, 2 * stop)]
      padded = np.concatenate([chunk] + [chunk[-1:]] * (BATCH - len(chunk)))
      mean, std = encode_fn(padded)
      want_mean.append(np.asarray(mean)[:len(chunk)].astype(np.float16))
      want_std.append(np.asarray(std)[:len(chunk)].astype(np.float16))
  want_mean, want_std = np.concatenate(want_mean), np.concatenate(want_std)
  # ... and within float16 rounding of one unbatched call.
  mean, std = encode_fn(both)
  np.testing.assert_allclose(want_mean, np.asarray(mean), rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(want_std, np.asarray(std), rtol=2e-3, atol=1e-4)
  for r in range(len(source)):
    rec = source[r]
    assert (rec['index'], rec['flip']) == (r // 2, bool(r % 2))
    assert rec['label'] == images[r // 2]['label']
    np.testing.assert_array_equal(rec['latent_mean'], want_mean[r])
    np.testing.assert_array_equal(rec['latent_std'], want_std[r])
  # The mirror record is the encoding of the mirrored image, not a mirrored latent.
  assert not np.array_equal(source[1]['latent_mean'], source[0]['latent_mean'][:, ::-1])
  assert (want_std > 0).all()


def test_two_processes_write_the_same_files(cache, images, encode_fn, tmp_path):
  first = write(images, tmp_path, encode_fn, process_index=0, process_count=2)
  assert (first['owned'], first['written'], first['meta_written']) == (2, 2, False)
  with pytest.raises(ValueError, match=r'incomplete: 2 shard\(s\) done of 4 and no meta.json'):
    latents.open_latent_source(tmp_path, 'train')
  second = write(images, tmp_path, encode_fn, process_index=1, process_count=2)
  assert second['meta_written']
  assert files(tmp_path / 'train') == files(cache / 'train')


def test_resume_after_interruptions(cache, images, encode_fn, tmp_path):
  def stop_after_first(shard):
    raise KeyboardInterrupt(f'stopped after shard {shard}')

  with pytest.raises(KeyboardInterrupt):
    write(images, tmp_path, encode_fn, after_shard=stop_after_first)
  calls = []

  def dies_mid_shard(batch):  # the 2nd call is shard 1's first: it leaves a partial file
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError('preempted')
    return encode_fn(batch)

  with pytest.raises(RuntimeError, match='preempted'):
    write(images, tmp_path, dies_mid_shard)
  assert (tmp_path / 'train' / '.latents-00001-of-00004.array_record.tmp').exists()
  summary = write(images, tmp_path, encode_fn)
  assert (summary['skipped'], summary['written']) == (1, 3)
  assert files(tmp_path / 'train') == files(cache / 'train')

  # A lost shard (and marker) is found by the reader and redone by a rerun.
  (tmp_path / 'train' / 'latents-00002-of-00004.array_record').unlink()
  with pytest.raises(ValueError, match='lists 4 shards but 1 are missing') as err:
    latents.open_latent_source(tmp_path, 'train')
  assert str(tmp_path / 'train') in str(err.value)
  assert 'python -m biflow_jax.tools.cache_latents' in str(err.value)
  summary = write(images, tmp_path, encode_fn)
  assert (summary['skipped'], summary['written']) == (3, 1)
  assert files(tmp_path / 'train') == files(cache / 'train')


def test_rerun_with_other_settings_is_refused(cache, images, encode_fn, tmp_path):
  write(images, tmp_path, encode_fn)
  with pytest.raises(ValueError, match='examples_per_shard: 4 on disk, 5 now'):
    write(images, tmp_path, encode_fn, examples_per_shard=5)
  with pytest.raises(ValueError, match='even number'):
    write(images, tmp_path, encode_fn, batch_size=5)


# ----------------------------------------------------------------------------- reading


def test_missing_and_empty_cache_errors(tmp_path):
  with pytest.raises(ValueError, match='no latent cache at') as err:
    latents.open_latent_source(tmp_path / 'nowhere', 'train')
  assert 'cache_latents' in str(err.value) and '--split=train' in str(err.value)
  (tmp_path / 'train').mkdir()
  with pytest.raises(ValueError, match='holds no latent shards'):
    latents.open_latent_source(tmp_path, 'train')


def test_gather(cache, images):
  from biflow_jax import config_lib
  import grain
  source = latents.open_latent_source(cache, 'train')
  config = config_lib.base_config()
  config.model.update(image_size=8, in_channels=4, num_classes=10)
  gather = latents.LatentGather.from_config(source, config)
  idx = np.array([5, 0, 27, 12])
  batch = gather(idx)
  assert batch['latent_mean'].shape == (4,) + LATENT and batch['latent_mean'].dtype == np.float32
  assert batch['latent_std'].shape == (4,) + LATENT and batch['latent_std'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  assert batch['label'].tolist() == [images[i // 2]['label'] for i in idx]
  np.testing.assert_array_equal(batch['latent_mean'][2], source[27]['latent_mean'])
  again = pickle.loads(pickle.dumps(gather))(idx)
  np.testing.assert_array_equal(again['latent_std'], batch['latent_std'])
  # In a grain pipeline, as the training stream uses it.
  ds = grain.MapDataset.range(len(source)).batch(7).map(gather)
  assert sum(len(b['label']) for b in ds) == 2 * NUM_IMAGES

  config.model.image_size = 32
  with pytest.raises(ValueError, match=r'holds 8x8x4 latents .*config.model.image_size=32'):
    latents.LatentGather.from_config(source, config)
  with pytest.raises(ValueError, match=r'label \d is outside \[0, 2\)'):
    latents.LatentGather(source, 8, 4, num_classes=2)(np.arange(len(source)))


def test_sample_latents_statistics():
  mean = jnp.full((64, 32, 32, 4), 2.0)
  std = jnp.full((64, 32, 32, 4), 0.5)
  sample = jax.jit(biflow.sample_latents, static_argnums=3)
  z = sample(mean, std, jax.random.PRNGKey(0), 0.2)
  assert z.shape == mean.shape and z.dtype == jnp.float32
  assert float(z.mean()) == pytest.approx(0.4, abs=2e-3)   # 2.0 * 0.2
  assert float(z.std()) == pytest.approx(0.1, rel=1e-2)    # 0.5 * 0.2
  z2 = sample(mean, std, jax.random.PRNGKey(1), 0.2)
  assert not np.array_equal(np.asarray(z), np.asarray(z2))


# ---------------------------------------------------------------------- tfds and the CLI


def test_open_image_source(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=5):
    source = input_pipeline.open_tfds_source('imagenet2012', 'train', str(tmp_path))
    assert len(source) == 5
    assert source[0]['image'].dtype == np.uint8 and source[0]['image'].shape[-1] == 3
  with pytest.raises(ValueError, match='not prepared') as err:
    input_pipeline.open_tfds_source('imagenet2012', 'train', str(tmp_path), manual_dir='/archives')
  assert (f'tfds build imagenet2012 --data_dir={tmp_path} --manual_dir=/archives '
          '--file_format=array_record') in str(err.value)
  with pytest.raises(ValueError, match="unknown tfds dataset 'no_such_dataset_xyz'"):
    input_pipeline.open_tfds_source('no_such_dataset_xyz', 'train')


CLI = """
import sys
import tensorflow_datasets as tfds
from absl import app
sys.path.insert(0, {tests!r})
import test_latents
from biflow_jax.tools import cache_latents
cache_latents.load_vae = lambda vae_cfg: test_latents.tiny_vae()
with tfds.testing.mock_data(num_examples={n}):
  app.run(cache_latents.main, argv=['cache_latents'] + sys.argv[1:],
          flags_parser=cache_latents.cli.parse_flags)
"""


def test_cli_on_mock_imagenet(encode_fn, tmp_path):
  """The real command on configs/imagenet256.py, shrunk by overrides; tfds ImageNet is
  mocked and the VAE is the tiny random one (conversion of real weights is tested with
  biflow_jax.convert.vae). Its shards equal the function API's on the same source."""
  import tensorflow_datasets as tfds
  n = 6
  args = [f'--config={REPO / "configs/imagenet256.py"}', f'--out={tmp_path / "cli"}',
          '--batch=4', '--examples_per_shard=4', '--num_threads=2',
          f'--config.data.data_dir={tmp_path / "tfds"}', '--config.model.image_size=8',
          f'--config.vae.image_size={SIZE}', '--config.vae.block_out_channels=(8, 8)',
          '--config.vae.layers_per_block=1', '--config.vae.norm_num_groups=4']
  env = dict(JAX_PLATFORMS='cpu')
  run = python('-c', CLI.format(tests=str(REPO / 'tests'), n=n), *args, env=env, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert '2 shard(s) encoded, 0 already done' in run.stdout
  assert 'meta.json written' in run.stdout
  source = latents.open_latent_source(tmp_path / 'cli', 'train')
  assert len(source) == 2 * n
  assert source.meta['settings']['source'] == {'tfds_name': 'imagenet2012', 'split': 'train'}

  with tfds.testing.mock_data(num_examples=n):
    images = tfds.data_source('imagenet2012', split='train')
    latents.write_cache(images, tmp_path / 'api', encode_fn, split='train', image_size=SIZE,
                        scaling_factor=SCALING, batch_size=4, examples_per_shard=4)
  for name in ('latents-00000-of-00002.array_record', 'latents-00001-of-00002.array_record'):
    assert ((tmp_path / 'cli/train' / name).read_bytes()
            == (tmp_path / 'api/train' / name).read_bytes())

  rerun = python('-c', CLI.format(tests=str(REPO / 'tests'), n=n), *args, env=env, timeout=120)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert '0 shard(s) encoded, 2 already done' in rerun.stdout
