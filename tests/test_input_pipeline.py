"""Input pipeline: bundled MNIST, JPEG folders/tars, tfds (mocked and a real ArrayRecord
build), deterministic host-sharded grain batches and their checkpointing. No network."""
import gzip
import importlib.resources
import importlib.resources.abc  # noqa: F401  # the shim below needs the submodule loaded
import io
import tarfile

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from biflow_jax import config_lib
from biflow_jax.data import input_pipeline as ip

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def index_source(n):
  """Examples whose label is their own index, to see exactly which ones a host got."""
  images = np.zeros((n, 1, 1, 1), np.uint8)
  return ip.Source(n, ip.ArrayGather(images, np.arange(n, dtype=np.int32)))


def labels_of(ds, num_batches):
  it = iter(ds)
  return [next(it)['label'] for _ in range(num_batches)]


@pytest.fixture
def config():
  c = config_lib.base_config()
  c.batch_size = 16
  return c


# ---------------------------------------------------------------------- bundled MNIST


def test_bundled_mnist_contents():
  images, labels = ip.load_bundled_mnist()
  assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (10000,) and labels.dtype == np.int32
  assert np.bincount(labels).tolist() == MNIST_COUNTS
  # The README's mean pixel 0.1325 is of the [0, 1] scale: 33.79 of 255.
  assert images.mean() / 255 == pytest.approx(0.1325, abs=5e-4)


def test_bundled_split_is_fixed_and_disjoint(config):
  train = ip.load_source(config, 'train').gather
  heldout = ip.load_heldout(config)
  assert len(train.labels) == 9000 and len(heldout['label']) == 1000
  train_idx, heldout_idx = ip.bundled_mnist_split(9000, 1000)
  assert not set(train_idx) & set(heldout_idx)
  assert len(set(train_idx) | set(heldout_idx)) == 10000
  config.data.seed = 123
  assert_same_batches([heldout], [ip.load_heldout(config)])
  np.testing.assert_array_equal(train.images, ip.load_source(config, 'train').gather.images)


def test_bundled_split_too_large(config):
  config.data.num_heldout = 1001
  with pytest.raises(ValueError, match='num_train=9000.*num_heldout=1001'):
    ip.load_heldout(config)


def test_corrupt_idx_is_reported(tmp_path, monkeypatch):
  (tmp_path / ip.MNIST_LABELS).write_bytes((ip.MNIST_DIR / ip.MNIST_LABELS).read_bytes())
  data = bytearray(gzip.decompress((ip.MNIST_DIR / ip.MNIST_IMAGES).read_bytes()))
  data[3] = 0x01  # magic 2051 -> 2049
  (tmp_path / ip.MNIST_IMAGES).write_bytes(gzip.compress(bytes(data), compresslevel=1))
  monkeypatch.setattr(ip, 'MNIST_DIR', tmp_path)
  with pytest.raises(ValueError, match='corrupt.*magic 2049'):
    ip.load_bundled_mnist()
  (tmp_path / ip.MNIST_IMAGES).write_bytes(b'not gzip')
  with pytest.raises(ValueError, match='unreadable or corrupt'):
    ip.load_bundled_mnist()


# ---------------------------------------------------------------- the training stream


def test_train_batches_and_determinism(config):
  batches = take(ip.create_train_iterator(config), 3)
  b = batches[0]
  assert b['image'].shape == (16, 28, 28, 1) and b['image'].dtype == np.uint8
  assert b['label'].shape == (16,) and b['label'].dtype == np.int32
  assert_same_batches(batches, take(ip.create_train_iterator(config), 3))
  config.data.seed = 1
  other = take(ip.create_train_iterator(config), 3)
  assert not all(np.array_equal(x['label'], y['label']) for x, y in zip(batches, other))


def test_each_epoch_is_a_fresh_permutation():
  ds = ip.train_dataset(index_source(32), batch_size=8, seed=0)
  labels = np.concatenate(labels_of(ds, 12)).reshape(3, 32)
  for epoch in labels:
    assert sorted(epoch) == list(range(32))
  assert not np.array_equal(labels[0], labels[1])
  assert not np.array_equal(labels[0], np.arange(32))


def test_two_hosts_split_the_global_batch():
  n, global_batch = 40, 8
  src = index_source(n)
  single = labels_of(ip.train_dataset(src, batch_size=global_batch, seed=3), 10)
  hosts = [labels_of(ip.train_dataset(src, batch_size=global_batch, seed=3,
                                      process_index=p, process_count=2), 10)
           for p in range(2)]
  assert all(len(b) == global_batch // 2 for h in hosts for b in h)
  # One epoch = 5 global batches: the hosts' shares are disjoint and cover it.
  epoch = [np.concatenate(h[:5]) for h in hosts]
  assert not set(epoch[0]) & set(epoch[1])
  assert sorted(np.concatenate(epoch)) == list(range(n))
  # And global batch j is the same whatever the process count.
  for j in range(10):
    assert sorted(np.concatenate([hosts[0][j], hosts[1][j]])) == sorted(single[j])


def test_host_batch_from_config(config):
  config.batch_size = 32
  it = ip.create_train_iterator(config, process_index=1, process_count=2)
  assert next(it)['image'].shape == (16, 28, 28, 1)


def test_state_round_trip(config):
  it = ip.create_train_iterator(config)
  take(it, 5)
  state = it.get_state()
  expected = take(it, 3)
  fresh = ip.create_train_iterator(config)
  fresh.set_state(state)
  assert_same_batches(expected, take(fresh, 3))


def test_orbax_checkpoint_round_trip(config, tmp_path):
  it = ip.create_train_iterator(config)
  take(it, 4)
  mngr = ocp.CheckpointManager(tmp_path / 'ckpt', options=ocp.CheckpointManagerOptions(
      max_to_keep=2))
  params = {'w': np.arange(3.0)}
  mngr.save(4, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                       data=ip.iterator_save_arg(it)))
  expected = take(it, 3)  # advancing after save() must not change what was saved
  mngr.wait_until_finished()
  assert list((tmp_path / 'ckpt' / '4' / 'data').glob('process_0-of-1.json'))
  mngr.close()

  mngr = ocp.CheckpointManager(tmp_path / 'ckpt')
  fresh = ip.create_train_iterator(config)
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      params=ocp.args.StandardRestore(params), data=ip.iterator_restore_arg(fresh)))
  mngr.close()
  assert restored['data'] is fresh
  np.testing.assert_array_equal(restored['params']['w'], params['w'])
  assert_same_batches(expected, take(fresh, 3))


# ----------------------------------------------------------------------- held-out data


def test_heldout_batches_fixed_order():
  arrays = {'image': np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1),
            'label': np.arange(10, dtype=np.int32)}
  batches = list(ip.heldout_batches(arrays, 4))
  assert [b['label'].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert batches[1]['image'].shape == (4, 1, 1, 1)
  with pytest.raises(ValueError):
    list(ip.heldout_batches(arrays, 0))


# --------------------------------------------------------------------------------- jpeg


def jpeg_bytes(value, size=8, mode='RGB'):
  buf = io.BytesIO()
  Image.new(mode, (size, size), (value, 255 - value, 7) if mode == 'RGB' else value).save(
      buf, format='JPEG', quality=95)
  return buf.getvalue()


def jpeg_layout(sizes=None):
  """{relative path: bytes}: train and test splits of classes 'zebra' and 'ant', 3 each."""
  files = {}
  for split in ('train', 'test'):
    for c, cls in enumerate(('zebra', 'ant')):
      for i in range(3):
        size = (sizes or {}).get((split, cls, i), 8)
        files[f'{split}/{cls}/{i:04d}.jpg'] = jpeg_bytes(40 * c + 10 * i, size)
  return files


def write_folder(root, files):
  for rel, data in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  (root / 'train' / 'ant' / 'notes.txt').write_text('ignored')
  return root


def write_tar(path, files):
  with tarfile.open(path, 'w:gz') as tar:
    for rel, data in sorted(files.items(), reverse=True):  # order must not matter
      info = tarfile.TarInfo(rel)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def test_jpeg_folder_and_tar_agree(tmp_path):
  files = jpeg_layout()
  folder = write_folder(tmp_path / 'jpegs', files)
  tar = write_tar(tmp_path / 'jpegs.tar.gz', files)
  images, labels, classes = ip.load_jpeg_images(folder, 'train', image_size=8)
  assert classes == ['ant', 'zebra']
  assert labels.tolist() == [0, 0, 0, 1, 1, 1] and labels.dtype == np.int32
  assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
  # ant (folder index 1 when written) came out first: label 0 holds its pixel values.
  assert abs(int(images[0, 0, 0, 0]) - 40) <= 3
  t_images, t_labels, t_classes = ip.load_jpeg_images(tar, 'train', image_size=8)
  np.testing.assert_array_equal(images, t_images)
  np.testing.assert_array_equal(labels, t_labels)
  assert t_classes == classes
  gray, _, _ = ip.load_jpeg_images(tar, 'test', channels=1)
  assert gray.shape == (6, 8, 8, 1)


def test_jpeg_config_pipeline(tmp_path, config):
  config.data.source = 'jpeg'
  config.data.path = str(write_tar(tmp_path / 'd.tar', jpeg_layout()))
  config.model.update(image_size=8, in_channels=3, num_classes=2)
  config.batch_size = 4
  batch = next(ip.create_train_iterator(config))
  assert batch['image'].shape == (4, 8, 8, 3)
  heldout = ip.load_heldout(config)
  assert heldout['image'].shape == (6, 8, 8, 3)
  config.model.num_classes = 3
  with pytest.raises(ValueError, match=r"2 class folders \['ant', 'zebra'\].*num_classes=3"):
    ip.load_heldout(config)


def test_jpeg_wrong_size_and_missing_split(tmp_path):
  folder = write_folder(tmp_path / 'j', jpeg_layout({('train', 'zebra', 2): 9}))
  with pytest.raises(ValueError, match=r'zebra/0002.jpg.*\(9, 9, 3\).*image_size=8'):
    ip.load_jpeg_images(folder, 'train', image_size=8)
  with pytest.raises(ValueError, match='zebra/0002.jpg'):
    ip.load_jpeg_images(folder, 'train')  # sizes must agree even without image_size
  with pytest.raises(ValueError, match="no split folder 'val'"):
    ip.load_jpeg_images(folder, 'val')


# ---------------------------------------------------------------------------------- tfds


@pytest.fixture
def tfds_config(config, tmp_path):
  config.data.update(source='tfds', tfds_name='mnist', data_dir=str(tmp_path / 'tfds'))
  config.batch_size = 8
  return config


def test_tfds_mock_source(tfds_config):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=24):
    it = ip.create_train_iterator(tfds_config)
    batches = take(it, 4)
    heldout = ip.load_heldout(tfds_config)
  assert batches[0]['image'].shape == (8, 28, 28, 1)
  assert batches[0]['image'].dtype == np.uint8 and batches[0]['label'].dtype == np.int32
  assert heldout['image'].shape == (24, 28, 28, 1)
  assert 0 <= heldout['label'].min() and heldout['label'].max() < 10


def test_tfds_mock_checks_config(tfds_config):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=4):
    tfds_config.model.image_size = 32
    with pytest.raises(ValueError, match=r'\(28, 28, 1\).*image_size=32'):
      ip.load_heldout(tfds_config)
    tfds_config.model.image_size = 28
    tfds_config.model.num_classes = 5
    with pytest.raises(ValueError, match='10 classes.*num_classes=5'):
      ip.load_heldout(tfds_config)


def test_tfds_missing_dataset_message(tfds_config):
  with pytest.raises(ValueError) as err:
    ip.load_heldout(tfds_config)
  msg = str(err.value)
  assert "'mnist'" in msg and tfds_config.data.data_dir in msg
  assert 'tfds build mnist' in msg and '--file_format=array_record' in msg
  assert 'manual_dir' in msg
  tfds_config.data.tfds_name = 'no_such_dataset_xyz'
  with pytest.raises(ValueError, match="unknown tfds dataset 'no_such_dataset_xyz'"):
    ip.load_heldout(tfds_config)


def test_tfds_real_array_record(tfds_config, tmp_path, monkeypatch):
  """A real (tiny) ArrayRecord dataset built locally by tfds's own DummyMnist."""
  from tensorflow_datasets import testing as tfds_testing
  with monkeypatch.context() as m:
    # tfds 4.9.10 imports `importlib_resources` when *building* without declaring it
    # for Python >= 3.9; the stdlib module has what it uses. Reading needs no shim.
    try:
      import importlib_resources  # noqa: F401
    except ImportError:
      m.setitem(__import__('sys').modules, 'importlib_resources', importlib.resources)
    data_dir = tmp_path / 'ar'
    tfds_testing.DummyMnist(data_dir=data_dir, file_format='array_record').download_and_prepare()
    tf_dir = tmp_path / 'tfrecord'
    tfds_testing.DummyMnist(data_dir=tf_dir).download_and_prepare()
  tfds_config.data.update(tfds_name='dummy_mnist', data_dir=str(data_dir))
  first = take(ip.create_train_iterator(tfds_config), 3)
  assert first[0]['image'].shape == (8, 28, 28, 1) and first[0]['label'].dtype == np.int32
  assert_same_batches(first, take(ip.create_train_iterator(tfds_config), 3))
  assert ip.load_heldout(tfds_config)['label'].shape == (20,)
  tfds_config.data.data_dir = str(tf_dir)
  with pytest.raises(ValueError, match='needs ArrayRecord.*--file_format=array_record'):
    ip.load_heldout(tfds_config)


# ---------------------------------------------------------------------------- bad input


def test_labels_out_of_range(config):
  config.model.num_classes = 5
  with pytest.raises(ValueError, match=r'label [5-9] .*outside \[0, 5\).*num_classes=5'):
    ip.create_train_iterator(config)
  config.model.num_classes = 0  # unconditional: any label is fine
  next(ip.create_train_iterator(config))


def test_wrong_image_size(config):
  config.model.image_size = 32
  with pytest.raises(ValueError, match=r'\(28, 28, 1\).*image_size=32.*Set those fields to match'):
    ip.create_train_iterator(config)
  config.model.update(image_size=28, in_channels=3)
  with pytest.raises(ValueError, match='in_channels=3'):
    ip.load_heldout(config)


def test_batch_not_divisible(config):
  config.batch_size = 63
  with pytest.raises(ValueError, match='batch_size=63 is not divisible.*2'):
    ip.create_train_iterator(config, process_index=0, process_count=2)


def test_unknown_source(config):
  config.data.source = 'webdataset'
  with pytest.raises(ValueError, match="unknown config.data.source='webdataset'"):
    ip.load_heldout(config)
