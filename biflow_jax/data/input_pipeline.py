"""Training and held-out data: bundled MNIST, a JPEG folder/tar, or a prepared tfds dataset.

Images stay uint8 NHWC all the way to the device: the jitted train step draws the
dequantisation noise and scales to [-1, 1], so the host only gathers bytes.

The training stream is a grain pipeline over *indices*:

    range(n) -> shuffle(seed, reshuffled each epoch) -> repeat forever
             -> batch(global batch) -> this host's rows -> gather

Every host walks the one global shuffled stream and keeps the rows of each global
batch that its own devices hold (a contiguous block, see `parallel.process_rows`).
So global batch j is the same array, row for row, whatever the process count, and
each host sees every example over time. The state of the iterator is one integer,
the number of global batches taken, so `get_state`/`set_state` and orbax checkpoints
are exact and O(1), and a run can resume on a different number of hosts.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from biflow_jax import assets
from biflow_jax.data import image_files, latents, market_source

#: config.data.source: where examples come from (see `load_source`).
SOURCES = ('bundled_mnist', 'tfds', 'jpeg', 'latents', 'market')
MNIST_DIR = assets.ASSETS_DIR  # the bundled MNIST test split ships with the package
MNIST_IMAGES = 't10k-images-idx3-ubyte.gz'
MNIST_LABELS = 't10k-labels-idx1-ubyte.gz'
MNIST_SIZE = 10000
# The bundled train/held-out split never moves: changing the shuffle seed must not
# leak held-out digits into training.
BUNDLED_SPLIT_SEED = 0
IMAGE_SUFFIXES = image_files.IMAGE_SUFFIXES

Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- checks


def check_images(images: np.ndarray, image_size: int, channels: int, where: str) -> None:
  """A geometry mismatch is a config error (only image files can be resized): say which."""
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'{where}: expected uint8 NHWC images, got {images.dtype} '
                     f'{images.shape}')
  if images.shape[1:] != (image_size, image_size, channels):
    _raise_shape(images.shape[1:], image_size, channels, where)


def _raise_shape(shape: Sequence[Any], image_size: int, channels: int, where: str):
  raise ValueError(
      f'{where}: images are {tuple(shape)} (H, W, C) but the config asks for '
      f'({image_size}, {image_size}, {channels}) via config.model.image_size='
      f'{image_size} and config.model.in_channels={channels}. Set those fields to match '
      "the data; for JPEG/PNG folders and tars, config.data.resize='centre_crop' resizes "
      'and centre-crops every image to the model size instead.')


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """A label outside [0, num_classes) would silently index a wrong class embedding."""
  if num_classes <= 0 or labels.size == 0:
    return
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f'{where}: label {int(labels[i])} (example {i}, {bad.size} bad in all) is '
        f'outside [0, {num_classes}) set by config.model.num_classes={num_classes}; '
        'set it to the dataset\'s class count, or 0 for an unconditional model.')


def host_batch_size(batch_size: int, process_count: int) -> int:
  """Each JAX process loads an equal share of the global batch."""
  if batch_size <= 0:
    raise ValueError(f'config.batch_size must be positive, got {batch_size}')
  if batch_size % process_count:
    raise ValueError(
        f'config.batch_size={batch_size} is not divisible by the number of JAX '
        f'processes ({process_count}); each process loads batch_size / process_count '
        'examples, so pick a multiple of the process count.')
  return batch_size // process_count


# ---------------------------------------------------------------------- bundled MNIST


def _read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> np.ndarray:
  """Reads one gzip IDX file, refusing anything but the exact bundled header."""
  try:
    raw = gzip.decompress(path.read_bytes())
  except (OSError, EOFError) as err:
    raise ValueError(f'bundled MNIST file {path} is unreadable or corrupt: {err}') from err
  header = 4 + 4 * len(dims)
  if len(raw) < header:
    raise ValueError(f'bundled MNIST file {path} is truncated ({len(raw)} bytes)')
  got_magic = int.from_bytes(raw[:4], 'big')
  got_dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(len(dims)))
  if got_magic != magic or got_dims != dims:
    raise ValueError(f'bundled MNIST file {path} is corrupt: header magic {got_magic} '
                     f'dims {got_dims}, expected magic {magic} dims {dims}')
  if len(raw) != header + int(np.prod(dims)):
    raise ValueError(f'bundled MNIST file {path} is corrupt: {len(raw) - header} data '
                     f'bytes, expected {int(np.prod(dims))}')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
  """The MNIST test split shipped in the package: (uint8 (10000,28,28,1), int32 (10000,))."""
  images = _read_idx(MNIST_DIR / MNIST_IMAGES, 2051, (MNIST_SIZE, 28, 28))
  labels = _read_idx(MNIST_DIR / MNIST_LABELS, 2049, (MNIST_SIZE,))
  if labels.max() > 9:
    raise ValueError(f'bundled MNIST labels are corrupt: max label {labels.max()}')
  return images[..., None].copy(), labels.astype(np.int32)


def bundled_mnist_split(num_train: int, num_heldout: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the bundled train and held-out parts: a fixed permutation, cut in two."""
  if num_train <= 0 or num_heldout < 0 or num_train + num_heldout > MNIST_SIZE:
    raise ValueError(
        f'config.data.num_train={num_train} + config.data.num_heldout={num_heldout} '
        f'must be positive and at most the {MNIST_SIZE} bundled MNIST images.')
  perm = np.random.default_rng(BUNDLED_SPLIT_SEED).permutation(MNIST_SIZE)
  return perm[:num_train], perm[num_train:num_train + num_heldout]


# ------------------------------------------------------------------------------- JPEG


def _split_members(path: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
  """(class, file name, bytes) of each image under <split>/<class>/ in a folder or tar.

  A tar is read in one streaming pass (no random seeks, no re-opening per member).
  """
  if path.is_dir():
    root = path / split
    if not root.is_dir():
      found = sorted(p.name for p in path.iterdir() if p.is_dir())
      raise ValueError(f'{path}: no split folder {split!r} (found {found})')
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
      for f in sorted(class_dir.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
          yield class_dir.name, f.name, f.read_bytes()
    return
  with tarfile.open(path, 'r|*') as tar:
    for member in tar:
      parts = PurePosixPath(member.name).parts
      if (member.isfile() and len(parts) >= 3 and parts[-3] == split
          and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES):
        yield parts[-2], parts[-1], tar.extractfile(member).read()


def load_jpeg_images(
    path: str | os.PathLike[str], split: str, *, channels: int = 3,
    image_size: int | None = None, resize: str = 'none', skip_bad: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Decodes <split>/<class>/<file>.jpg from a folder or .tar(.gz): (uint8 NHWC, int32, classes).

  Labels index the class folder names sorted alphabetically; examples are ordered by
  (class, file name) so the result does not depend on the tar's member order.
  Any PIL mode (grayscale, RGBA, palette) is converted to `channels` (1: 'L', 3: 'RGB').
  resize='none': `image_size` (if given) must match every image; 'centre_crop': ADM-style
  resize and centre crop to `image_size` (see `image_files`). A file that cannot be
  decoded is an error naming it, or with `skip_bad` is skipped and counted in the log.
  """
  path = Path(path)
  if not path.exists():
    raise ValueError(f'jpeg data path {str(path)!r} (config.data.path) does not exist')
  if channels not in (1, 3):
    raise ValueError(f'jpeg images decode to 1 or 3 channels, not in_channels={channels}')
  if resize != 'none' and image_size is None:
    raise ValueError(f'resize={resize!r} needs image_size')
  records, skipped = [], []
  for cls, name, data in _split_members(path, split):
    where = f'{path}:{split}/{cls}/{name}'
    try:
      arr = image_files.decode(data, where, channels, image_size if resize != 'none' else None,
                               resize)
    except image_files.BadImageError:
      if not skip_bad:
        raise
      skipped.append(where)
      continue
    want = image_size if image_size is not None else (records[0][2].shape[0] if records else None)
    if want is not None and arr.shape[:2] != (want, want):
      _raise_shape(arr.shape, want, channels, where)
    records.append((cls, name, arr))
  if skipped:
    logging.warning('skipped %d undecodable image(s) in %s:%s (config.data.skip_bad_images), '
                    'first: %s', len(skipped), path, split, skipped[0])
  if not records:
    raise ValueError(f'no {"/".join(IMAGE_SUFFIXES)} images under {split}/<class>/ in {path}')
  records.sort(key=lambda r: (r[0], r[1]))
  class_names = sorted({r[0] for r in records})
  index = {c: i for i, c in enumerate(class_names)}
  images = np.stack([r[2] for r in records])
  labels = np.array([index[r[0]] for r in records], np.int32)
  return images, labels, class_names


# ------------------------------------------------------------------------------- tfds


def _tfds_unprepared_error(tfds: Any, name: str, split: str, data_dir: str,
                           err: Exception, manual_dir: str = '') -> ValueError | None:
  """Turns "not prepared / wrong file format" into one actionable message."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception:  # pylint: disable=broad-except  # the original error says more
    return None
  shown = data_dir or '(tfds default: $TFDS_DATA_DIR or ~/tensorflow_datasets)'
  manual = f'--manual_dir={manual_dir} ' if manual_dir else ''
  build = (f'tfds build {name} --data_dir={data_dir or "<data_dir>"} {manual}'
           '--file_format=array_record')
  if not builder.is_prepared():
    return ValueError(
        f'tfds dataset {name!r} (split {split!r}) is not prepared under data_dir {shown} '
        f'(looked in {builder.data_path}). Prepare it in ArrayRecord format on a machine '
        f'with network: `{build}` (datasets with manual downloads, e.g. ImageNet, also '
        'need --manual_dir=<folder with the archives>), then copy the data_dir here '
        'and set config.data.data_dir to it. This pipeline never downloads.')
  file_format = getattr(builder.info, 'file_format', None)
  if file_format is not None and 'array_record' not in str(file_format).lower():
    return ValueError(
        f'tfds dataset {name!r} under {builder.data_path} is prepared as {file_format}, '
        f'but random access (tfds.data_source) needs ArrayRecord: rebuild with `{build}` '
        f'into another data_dir. ({err})')
  return None


def open_tfds_source(name: str, split: str, data_dir: str = '',
                     manual_dir: str = '') -> Sequence[dict[str, Any]]:
  """A random-access tfds source (ArrayRecord) of {'image', 'label'} records; never downloads.

  `manual_dir` only goes into the how-to-prepare message (ImageNet needs its archives).
  """
  # Lazy: tfds imports TensorFlow (seconds), which only tfds sources need.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise ValueError("config.data.source='tfds' needs config.data.tfds_name, "
                     "e.g. 'cifar10' or 'imagenet_resized/64x64'")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f'unknown tfds dataset {name!r} (config.data.tfds_name); '
                     '`tfds.list_builders()` lists the known names') from None
  except Exception as err:  # pylint: disable=broad-except
    better = _tfds_unprepared_error(tfds, name, split, data_dir, err, manual_dir)
    if better is None:
      raise
    raise better from err


@dataclasses.dataclass(frozen=True)
class TfdsGather:
  """Reads and checks one batch of records from a tfds source (picklable for workers)."""
  source: Any
  image_size: int
  channels: int
  num_classes: int
  where: str

  def __call__(self, indices: np.ndarray) -> Batch:
    records = [self.source[int(i)] for i in indices]
    for r in records:
      if np.shape(r['image']) != (self.image_size, self.image_size, self.channels):
        _raise_shape(np.shape(r['image']), self.image_size, self.channels, self.where)
    images = np.stack([np.asarray(r['image'], np.uint8) for r in records])
    labels = np.array([int(r['label']) for r in records], np.int32)
    check_labels(labels, self.num_classes, self.where)
    return {'image': images, 'label': labels}


def _check_tfds_features(source: Any, image_size: int, channels: int, num_classes: int,
                         where: str) -> None:
  """Fails before training when the dataset's declared features contradict the config."""
  features = getattr(getattr(source, 'dataset_info', None), 'features', None)
  if features is None or 'image' not in features or 'label' not in features:
    if features is not None:
      raise ValueError(f'{where}: records need "image" and "label" features, '
                       f'the dataset has {list(features.keys())}')
    return
  shape = tuple(features['image'].shape)
  if None not in shape and shape != (image_size, image_size, channels):
    _raise_shape(shape, image_size, channels, where)
  declared = getattr(features['label'], 'num_classes', None)
  if num_classes > 0 and declared is not None and declared > num_classes:
    raise ValueError(f'{where}: the dataset has {declared} classes but '
                     f'config.model.num_classes={num_classes}; labels would fall outside '
                     f'[0, {num_classes}). Set config.model.num_classes={declared}.')


# --------------------------------------------------------------------- sources by config


@dataclasses.dataclass(frozen=True)
class ArrayGather:
  """Gathers a batch from in-memory arrays: one fancy index per batch, no per-example work."""
  images: np.ndarray
  labels: np.ndarray

  def __call__(self, indices: np.ndarray) -> Batch:
    return {'image': self.images[indices], 'label': self.labels[indices]}


@dataclasses.dataclass(frozen=True)
class ValuesGather:
  """Gathers float examples already in model space (market windows): {'values', 'label'}."""
  values: np.ndarray
  labels: np.ndarray

  def __call__(self, indices: np.ndarray) -> Batch:
    return {'values': self.values[indices], 'label': self.labels[indices]}


@dataclasses.dataclass(frozen=True)
class Source:
  """`length` examples and a picklable `gather(indices) -> batch`."""
  length: int
  gather: Any  # ArrayGather | TfdsGather | latents.LatentGather | ValuesGather


def _array_source(images: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict,
                  where: str) -> Source:
  check_images(images, config.model.image_size, config.model.in_channels, where)
  labels = np.asarray(labels, np.int32)
  if labels.shape != images.shape[:1]:
    raise ValueError(f'{where}: {images.shape[0]} images but labels of shape {labels.shape}')
  check_labels(labels, config.model.num_classes, where)
  return Source(len(images), ArrayGather(images, labels))


def load_source(config: ml_collections.ConfigDict, part: str) -> Source:
  """The 'train' or 'heldout' part of config.data, checked against the model config."""
  if part not in ('train', 'heldout'):
    raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
  data, model = config.data, config.model
  split = data.train_split if part == 'train' else data.heldout_split
  if data.source == 'bundled_mnist':
    images, labels = load_bundled_mnist()
    train_idx, heldout_idx = bundled_mnist_split(data.num_train, data.num_heldout)
    idx = train_idx if part == 'train' else heldout_idx
    return _array_source(images[idx], labels[idx], config, f'bundled_mnist[{part}]')
  if data.source == 'jpeg':
    if not data.path:
      raise ValueError("config.data.source='jpeg' needs config.data.path: a folder or "
                       '.tar(.gz) laid out <split>/<class>/<file>.jpg, given as '
                       '--config.data.path=...')
    images, labels, class_names = load_jpeg_images(
        data.path, split, channels=model.in_channels, image_size=model.image_size,
        resize=data.resize, skip_bad=data.skip_bad_images)
    where = f'jpeg {data.path}:{split}'
    if model.num_classes > 0 and len(class_names) != model.num_classes:
      raise ValueError(f'{where}: found {len(class_names)} class folders {class_names} '
                       f'but config.model.num_classes={model.num_classes}; labels index '
                       'the sorted folder names, so every split needs every class.')
    return _array_source(images, labels, config, where)
  if data.source == 'latents':
    if not data.path:
      raise ValueError("config.data.source='latents' needs config.data.path, the directory "
                       'written by `python -m biflow_jax.tools.cache_latents`')
    source = latents.open_latent_source(data.path, split)
    return Source(len(source), latents.LatentGather.from_config(source, config))
  if data.source == 'market':
    values, labels = market_source.arrays(config, part)
    return Source(len(values), ValuesGather(values, labels))
  if data.source == 'tfds':
    where = f'tfds {data.tfds_name}:{split}'
    source = open_tfds_source(data.tfds_name, split, data.data_dir)
    _check_tfds_features(source, model.image_size, model.in_channels, model.num_classes,
                         where)
    if len(source) == 0:
      raise ValueError(f'{where} is empty')
    return Source(len(source), TfdsGather(source, model.image_size, model.in_channels,
                                          model.num_classes, where))
  raise ValueError(f'unknown config.data.source={data.source!r}; expected one of {SOURCES}')


def is_image_data(config: ml_collections.ConfigDict) -> bool:
  """Whether examples are images (or latents of images) that sample grids can show."""
  return config.data.source != 'market'


# ---------------------------------------------------------------------------- training


def _grain_seed(seed: int) -> int:
  """Mixes the config seed: grain reshuffles epoch e with seed+e, so seeds 0 and 1 would
  otherwise share all but one epoch order."""
  if seed < 0:
    raise ValueError(f'config.data.seed must be non-negative, got {seed}')
  return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


@dataclasses.dataclass(frozen=True)
class TakeRows:
  """This host's block of a global batch of indices (picklable for grain)."""
  start: int
  stop: int

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    return indices[self.start:self.stop]


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """Process p's rows when every process holds an equal contiguous block."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  host_batch = host_batch_size(batch_size, process_count)
  return slice(process_index * host_batch, (process_index + 1) * host_batch)


def train_dataset(
    source: Source, *, batch_size: int, seed: int, process_index: int = 0,
    process_count: int = 1, num_threads: int = 2, rows: slice | None = None,
) -> grain.IterDataset:
  """The infinite, deterministic stream of this host's {'image', 'label'} batches.

  `rows` (default: block `process_index` of `process_count` equal ones) are the rows of
  each global batch this host loads; the mesh decides them (`parallel.process_rows`).
  Threads (not worker processes) prefetch: gathers from memory are a fancy index per
  batch and PIL decoding of tfds records releases the GIL, while grain's process workers
  would copy the arrays to each worker and need absl flags parsed.
  """
  if rows is None:
    rows = host_rows(batch_size, process_index, process_count)
  if not 0 <= rows.start < rows.stop <= batch_size:
    raise ValueError(f'rows {rows} are not inside a global batch of {batch_size}')
  ds = grain.MapDataset.range(source.length).shuffle(seed=_grain_seed(seed)).repeat()
  ds = ds.batch(batch_size, drop_remainder=True)
  if (rows.start, rows.stop) != (0, batch_size):
    ds = ds.map(TakeRows(rows.start, rows.stop))
  ds = ds.map(source.gather)
  # Each element is a whole batch, so a short prefetch buffer is plenty.
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=max(2, 2 * num_threads))
  return ds.to_iter_dataset(read)


def create_train_iterator(
    config: ml_collections.ConfigDict, *, process_index: int | None = None,
    process_count: int | None = None, rows: slice | None = None,
) -> grain.DatasetIterator:
  """This process's training iterator: {'image': uint8 (B/P, H, W, C), 'label': int32 (B/P,)}.

  `rows` come from the mesh (`parallel.process_rows`); without them, process index/count
  (default JAX's; pass them to simulate other hosts in tests) give equal blocks.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if rows is None:
    rows = host_rows(config.batch_size, process_index, process_count)  # fails before loading
  ds = train_dataset(
      load_source(config, 'train'), batch_size=config.batch_size, seed=config.data.seed,
      num_threads=config.data.get('num_threads', 2), rows=rows)
  return iter(ds)


def skip_to(it: grain.DatasetIterator, num_batches: int) -> None:
  """Moves a fresh iterator to just after `num_batches` global batches (any host count)."""
  state = it.get_state()
  if set(state) != {'next_index'}:
    raise ValueError(f'cannot position this iterator by batch count: state {state}')
  it.set_state({'next_index': int(num_batches)})


def iterator_save_arg(it: grain.DatasetIterator) -> Any:
  """Orbax save args for a CheckpointManager item, e.g. `data=iterator_save_arg(it)`.

  grain's handler writes `process_<i>-of-<n>.json` per JAX process with the iterator's
  state as of this call.
  """
  return grain.checkpoint.CheckpointSave(it)


def iterator_restore_arg(it: grain.DatasetIterator) -> Any:
  """Orbax restore args: `it` (built from the same config) is moved in place to the saved state."""
  return grain.checkpoint.CheckpointRestore(it)


# ----------------------------------------------------------------------------- subsets

# Stored data is often ordered (a JPEG folder class by class, a tfds split in whatever
# order it was prepared), so a subset is never "the first n stored examples": it is
# class-balanced when the labels are in memory, else a fixed random permutation. The seed
# is a constant, not config.data.seed: moving the training shuffle must not move what
# evaluation scores.
SUBSET_SEED = 0

#: Subset.method -> how the examples were chosen (written into eval.json).
SUBSET_METHODS = {
    'class_balanced': 'a fixed random order within each class, the classes taken in turn '
                      '(label order), so every prefix is as class-balanced as the data allows',
    'random_permutation': 'the first n of a fixed random permutation of the stored examples',
    'random_permutation_unmirrored': 'the first n of a fixed random permutation of the cached '
                                     'source images (latent records 2i; the mirrors 2i+1 are '
                                     'never taken)',
    'stored_order_of_fixed_permutation': 'the first n in stored order, which is already a fixed '
                                         'random permutation (input_pipeline.bundled_mnist_split, '
                                         f'seed {BUNDLED_SPLIT_SEED})',
}


def class_balanced_order(labels: np.ndarray, seed: int = SUBSET_SEED) -> np.ndarray:
  """Every index of `labels` (shape (n,)), ordered so that each prefix is class-balanced.

  Within each class the indices follow a fixed random permutation drawn from `seed`; the
  classes are then taken in turn in label order (first of each class, then second of
  each, ...), and a class that runs out leaves the rotation. A prefix of length m thus has
  floor(m / classes) or one more of each class while every class lasts. Returns int64 (n,).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be one-dimensional, got shape {labels.shape}')
  rng = np.random.default_rng(seed)
  rank = np.empty(labels.shape[0], np.int64)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    rank[members] = np.arange(members.size)
  # Primary key: rank within the class; ties (one per class) broken by the label.
  return np.lexsort((labels, rank)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Subset:
  """Which stored examples of a part a subset takes (`indices`, in the order used), and how."""
  part: str            # 'train' | 'heldout'
  split: str           # the stored split it comes from
  indices: np.ndarray  # int64 (n,) into the part's Source
  method: str          # a key of SUBSET_METHODS
  seed: int | None     # the permutation's seed; None when the stored order is used
  of: int              # examples stored in the part

  def describe(self, labels: np.ndarray | None = None, num_classes: int = 0) -> dict[str, Any]:
    """JSON-able record of the subset; `labels` (of the taken examples) add class counts."""
    record: dict[str, Any] = {
        'part': self.part, 'split': self.split, 'method': self.method,
        'how': SUBSET_METHODS[self.method], 'seed': self.seed,
        'num_examples': int(self.indices.size), 'of': int(self.of)}
    if labels is not None:
      labels = np.asarray(labels)
      counts = np.bincount(labels[labels >= 0], minlength=max(int(num_classes), 0))
      record['class_counts'] = counts.astype(int).tolist()
    return record


def subset(config: ml_collections.ConfigDict, part: str, source: Source,
           num: int | None = None) -> Subset:
  """The subset of `num` examples (all when None or larger) that evaluation takes of `part`.

  - bundled MNIST: stored order, already a fixed random permutation (keeps the numbers of
    earlier runs comparable);
  - labels in memory (JPEG folders and tars): `class_balanced_order`;
  - latents: a fixed random permutation of the source images, never their mirrors;
  - tfds (labels not read without decoding every record): a fixed random permutation.
  """
  if part not in ('train', 'heldout'):
    raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
  split = config.data.train_split if part == 'train' else config.data.heldout_split
  if config.data.source == 'bundled_mnist':
    split = f'bundled_mnist[{part}]'
  length = int(source.length)
  n = length if num is None else min(length, int(num))
  if n < 0:
    raise ValueError(f'a subset needs a non-negative size, got {num}')
  rng = np.random.default_rng(SUBSET_SEED)
  if config.data.source == 'bundled_mnist':
    return Subset(part, split, np.arange(n, dtype=np.int64),
                  'stored_order_of_fixed_permutation', None, length)
  if isinstance(source.gather, ArrayGather):
    order = class_balanced_order(source.gather.labels, SUBSET_SEED)
    return Subset(part, split, order[:n], 'class_balanced', SUBSET_SEED, length)
  if config.data.source == 'latents':
    images = length // 2
    n = min(n, images)
    return Subset(part, split, 2 * rng.permutation(images)[:n].astype(np.int64),
                  'random_permutation_unmirrored', SUBSET_SEED, length)
  return Subset(part, split, rng.permutation(length)[:n].astype(np.int64),
                'random_permutation', SUBSET_SEED, length)


def take_subset(config: ml_collections.ConfigDict, part: str,
                num: int | None = None) -> tuple[Batch, dict[str, Any]]:
  """(batch, record): the examples of `subset(config, part, ...)` in memory, and its
  `Subset.describe` record with the class counts of what was taken."""
  source = load_source(config, part)
  chosen = subset(config, part, source, num)
  batch = source.gather(chosen.indices)
  return batch, chosen.describe(batch['label'], config.model.num_classes)


# ----------------------------------------------------------------------------- held out


def load_heldout(config: ml_collections.ConfigDict, max_examples: int | None = None) -> Batch:
  """The held-out split in memory ({'image': uint8 NHWC, 'label': int32}, or latent
  mean/std): `max_examples` of them (all when None) taken as `subset` takes them, in that
  order, so the first batches of it are class-balanced (or a random sample) too."""
  return take_subset(config, 'heldout', max_examples)[0]


def heldout_batches(arrays: Batch, batch_size: int) -> Iterator[Batch]:
  """Fixed-order full batches of the held-out arrays (the remainder is dropped)."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  n = len(arrays['label'])
  for start in range(0, n - batch_size + 1, batch_size):
    yield {k: v[start:start + batch_size] for k, v in arrays.items()}
