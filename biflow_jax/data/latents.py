"""The latent cache: a dataset encoded once by the SD VAE, read back by random access.

Latent BiFlow trains on VAE posteriors. Running the encoder every step would cost more
than the flow, so `python -m biflow_jax.tools.cache_latents` encodes each image once, as
is and mirrored, and stores the posterior (mean, std). Training then draws
z = (mean + std * eps) * scaling_factor inside the jitted step (`biflow.sample_latents`), so
every epoch still sees fresh posterior noise.

Layout of DIR/<split>/:

    latents-SSSSS-of-NNNNN.array_record   ArrayRecord shard (group_size:1, uncompressed)
    latents-SSSSS-of-NNNNN.done           JSON completion marker, written after the shard
    meta.json                              written once every shard of the split is done

Source example i (in the split's order) lives in shard i // examples_per_shard; its
records are 2i (the image) and 2i+1 (its horizontal mirror), so reading all records is
flip augmentation without re-encoding. The layout depends only on (number of examples,
examples_per_shard); shard s is encoded by process s % process_count, and every file is
a pure function of the settings, so any process count, or a resumed run, writes the
same bytes.

Record (fixed header, then raw arrays; decoding is two `np.frombuffer` calls):

    24-byte little-endian header: magic b'BFL1' | int64 source index | int32 label
      | uint8 flip | uint8 dtype (1 float16, 2 float32) | uint16 h | uint16 w | uint16 c
    then mean, then std: h*w*c values each, C order (NHWC without the N).

float16 is the default: it keeps each value to a relative 2^-11, so a scaled latent
(|z| < ~5) is off by < 3e-3, far below the flow's training noise (sigma 0.1), at half the
disk and read bandwidth of float32 (ImageNet train: ~21 GB instead of ~42 GB).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module

from biflow_jax.runtime import files
from absl import logging
from PIL import Image

EncodeFn = Callable[[np.ndarray], tuple[Any, Any]]

FORMAT = 'biflow_jax latent cache'
VERSION = 1
META = 'meta.json'
PREPROCESSING = 'adm_center_crop'  # see `center_crop`
SHARD_SUFFIX = '.array_record'
DONE_SUFFIX = '.done'
WRITER_OPTIONS = 'group_size:1,uncompressed'  # one record per chunk: O(1) random reads

_MAGIC = b'BFL1'
_HEADER = struct.Struct('<4sqiBBHHH')
_DTYPE_CODES = {'float16': 1, 'float32': 2}
_CODE_DTYPES = {code: np.dtype(name).newbyteorder('<') for name, code in _DTYPE_CODES.items()}


def cache_command(path: str | os.PathLike[str], split: str) -> str:
  """The command that (re)builds or finishes a cache; every error below names it."""
  return (f'python -m biflow_jax.tools.cache_latents --config=configs/imagenet256.py '
          f'--out={path} --split={split}')


# ----------------------------------------------------------------------- preprocessing


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, C) image -> uint8 (size, size, 3), as ADM/DiT prepare ImageNet.

  While the short side is at least 2*size, halve the image with a box filter (cheap
  anti-aliasing); then resize with bicubic so the short side is exactly `size`; then take
  the centre size x size crop. Grayscale and RGBA inputs become RGB.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
    raise ValueError(f'expected a uint8 (H, W[, C]) image, got {image.dtype} {image.shape}')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  pil = Image.fromarray(image).convert('RGB')
  while min(pil.size) >= 2 * size:
    pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=Image.BOX)
  scale = size / min(pil.size)
  pil = pil.resize((max(size, round(pil.size[0] * scale)), max(size, round(pil.size[1] * scale))),
                   resample=Image.BICUBIC)
  arr = np.asarray(pil)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return np.ascontiguousarray(arr[top:top + size, left:left + size])


# ---------------------------------------------------------------------------- records


def encode_record(mean: np.ndarray, std: np.ndarray, *, label: int, flip: bool,
                  index: int) -> bytes:
  """One example's posterior as bytes (see the module docstring for the layout)."""
  mean, std = np.asarray(mean), np.asarray(std)
  if mean.shape != std.shape or mean.ndim != 3 or mean.dtype != std.dtype:
    raise ValueError(f'mean and std must be (h, w, c) arrays of one dtype, got '
                     f'{mean.dtype} {mean.shape} and {std.dtype} {std.shape}')
  if mean.dtype.name not in _DTYPE_CODES:
    raise ValueError(f'latents are stored as {sorted(_DTYPE_CODES)}, not {mean.dtype}')
  code = _DTYPE_CODES[mean.dtype.name]
  little = _CODE_DTYPES[code]
  header = _HEADER.pack(_MAGIC, index, label, int(bool(flip)), code, *mean.shape)
  return (header + np.ascontiguousarray(mean, little).tobytes()
          + np.ascontiguousarray(std, little).tobytes())


def decode_record(data: bytes) -> dict[str, Any]:
  """Bytes -> {'latent_mean', 'latent_std' (read-only (h, w, c) views), 'label', 'flip',
  'index'}."""
  if len(data) < _HEADER.size:
    raise ValueError(f'latent record of {len(data)} bytes is shorter than its header')
  magic, index, label, flip, code, h, w, c = _HEADER.unpack_from(data)
  if magic != _MAGIC or code not in _CODE_DTYPES:
    raise ValueError(f'not a latent record (magic {magic!r}, dtype code {code}); the file '
                     'is corrupt or was not written by biflow_jax.latents')
  dtype, n = _CODE_DTYPES[code], h * w * c
  if len(data) != _HEADER.size + 2 * n * dtype.itemsize:
    raise ValueError(f'latent record of {len(data)} bytes is truncated: its header says '
                     f'2 x {h}x{w}x{c} {dtype.name}')
  mean = np.frombuffer(data, dtype, n, _HEADER.size).reshape(h, w, c)
  std = np.frombuffer(data, dtype, n, _HEADER.size + n * dtype.itemsize).reshape(h, w, c)
  return {'latent_mean': mean, 'latent_std': std, 'label': label, 'flip': bool(flip),
          'index': index}


# ----------------------------------------------------------------------------- layout


def shard_bounds(num_examples: int, examples_per_shard: int) -> list[tuple[int, int]]:
  """[start, stop) source examples of each shard: fixed by the two numbers alone."""
  if num_examples <= 0:
    raise ValueError(f'nothing to cache: the source has {num_examples} examples')
  if examples_per_shard <= 0:
    raise ValueError(f'examples_per_shard must be positive, got {examples_per_shard}')
  return [(a, min(a + examples_per_shard, num_examples))
          for a in range(0, num_examples, examples_per_shard)]


def shard_name(shard: int, num_shards: int) -> str:
  return f'latents-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}'


def _done_path(shard_path: Path) -> Path:
  return shard_path.with_suffix(DONE_SUFFIX)


def _json_roundtrip(value: Any) -> Any:
  """What `value` reads back as from JSON (tuples become lists), so settings compare equal."""
  return json.loads(json.dumps(value, sort_keys=True))


def vae_info(vae_cfg: Any) -> dict[str, Any]:
  """config.vae as JSON, with only the weights' file name (the cache must not depend on
  where the weights happen to live when a run is resumed)."""
  info = dict(vae_cfg.to_dict() if hasattr(vae_cfg, 'to_dict') else vae_cfg)
  info['weights'] = os.path.basename(str(info.get('weights', '')))
  return _json_roundtrip(info)


# ----------------------------------------------------------------------------- writing


def make_vae_encode_fn(model: Any, params: Any, devices: Sequence[Any] | None = None
                       ) -> EncodeFn:
  """uint8 NHWC images -> (posterior mean, std), float32 NHWC, from an `AutoencoderKL`.

  One jitted call per batch, split over this process's devices (`devices`, default all
  local ones); a batch is padded to a multiple of the device count, so any size works.
  Only local devices: each process of a multi-host job encodes independently.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = jax.sharding.Mesh(np.array(devices), ('batch',))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)

  @jax.jit
  def encode(p, images):
    # objective.primitives.from_uint8's convention, written out: data and objective are
    # sibling layers that do not import each other (tests/test_architecture.py)
    x = images.astype(jnp.float32) / 127.5 - 1.0
    mean, logvar = model.apply({'params': p}, x, method=type(model).encode)
    return mean, jnp.exp(0.5 * logvar)

  def encode_fn(images: np.ndarray) -> tuple[jax.Array, jax.Array]:
    n = images.shape[0]
    pad = -n % len(devices)
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    mean, std = encode(params, jax.device_put(images, rows))
    return mean[:n], std[:n]

  return encode_fn


def _prefetch(pool: concurrent.futures.Executor | None, fn: Callable[[int], Any],
              chunks: Sequence[Sequence[int]], depth: int = 2) -> Iterator[list[Any]]:
  """`[fn(i) for i in chunk]` for each chunk, computed `depth` chunks ahead in `pool`."""
  if pool is None:
    for chunk in chunks:
      yield [fn(i) for i in chunk]
    return
  pending: collections.deque[list[concurrent.futures.Future]] = collections.deque()
  for chunk in chunks:
    pending.append([pool.submit(fn, i) for i in chunk])
    if len(pending) > depth:
      yield [f.result() for f in pending.popleft()]
  while pending:
    yield [f.result() for f in pending.popleft()]


@dataclasses.dataclass(frozen=True)
class _Settings:
  """Everything the bytes of the cache depend on; a resumed run must match it exactly."""
  values: dict[str, Any]

  def mismatch(self, other: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(self.values) | set(other))
    return [f'{k}: {other.get(k)!r} on disk, {self.values.get(k)!r} now'
            for k in keys if self.values.get(k) != other.get(k)]


def _shard_complete(path: Path, shard: int, settings: _Settings) -> bool:
  """A shard counts as done when its marker is in place, agrees with today's settings and
  the shard has the recorded size (a full checksum would re-read the whole cache)."""
  marker = files.read_json(_done_path(path))
  if marker is None:
    return False
  bad = settings.mismatch(marker.get('settings', {}))
  if bad:
    raise ValueError(
        f'{path.parent} holds a latent cache written with other settings ({"; ".join(bad)}). '
        'Write to another --out directory, or delete this split folder to start over.')
  return (marker.get('shard') == shard and path.is_file()
          and path.stat().st_size == marker.get('bytes'))


def write_cache(
    source: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str],
    encode_fn: EncodeFn, *, split: str, image_size: int, scaling_factor: float,
    info: Mapping[str, Any] | None = None, batch_size: int = 64,
    examples_per_shard: int = 2048, latent_dtype: str = 'float16', process_index: int = 0,
    process_count: int = 1, num_threads: int = 4,
    after_shard: Callable[[int], None] | None = None,
) -> dict[str, Any]:
  """Encodes this process's shards of `source` into out_dir/<split>/; returns a summary.

  `source[i]` is a {'image': uint8 (H, W[, C]), 'label': int} record (a tfds data source
  fits). Each image is `center_crop`ped to image_size, then it and its mirror are encoded
  by `encode_fn` (uint8 NHWC -> (mean, std)) `batch_size` images per call (the last call
  of a shard is padded, so one compiled shape serves all). `info` (JSON) is stored with
  the settings, e.g. the source dataset and the VAE config. Completed shards are skipped;
  a shard is written to a hidden temporary name and renamed when whole, then marked done.
  Whichever process finds every shard done writes meta.json (same bytes from any of
  them). `after_shard(s)` runs after shard s is done (tests interrupt runs with it).
  """
  if batch_size < 2 or batch_size % 2:
    raise ValueError(f'batch_size={batch_size}: each image is encoded with its mirror, '
                     'so pass an even number of images per encoder call (>= 2)')
  if latent_dtype not in _DTYPE_CODES:
    raise ValueError(f'latent_dtype={latent_dtype!r} is not one of {sorted(_DTYPE_CODES)}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  num_examples = len(source)
  bounds = shard_bounds(num_examples, examples_per_shard)
  settings = _Settings(_json_roundtrip({
      'split': split, 'num_examples': num_examples, 'examples_per_shard': examples_per_shard,
      'image_size': image_size, 'preprocessing': PREPROCESSING, 'latent_dtype': latent_dtype,
      'scaling_factor': scaling_factor, **(info or {})}))
  directory = Path(out_dir) / split
  directory.mkdir(parents=True, exist_ok=True)
  meta = files.read_json(directory / META)
  if meta is not None and settings.mismatch(meta.get('settings', {})):
    raise ValueError(
        f'{directory} holds a latent cache written with other settings '
        f'({"; ".join(settings.mismatch(meta["settings"]))}). Write to another --out '
        'directory, or delete this split folder to start over.')

  mine = list(range(process_index, len(bounds), process_count))
  todo = [s for s in mine
          if not _shard_complete(directory / shard_name(s, len(bounds)), s, settings)]
  logging.info('latent cache %s: %d examples in %d shards; process %d/%d owns %d, '
               'skipping %d already complete, encoding %d', directory, num_examples,
               len(bounds), process_index, process_count, len(mine), len(mine) - len(todo),
               len(todo))

  def load(i: int) -> tuple[np.ndarray, int]:
    record = source[i]
    return center_crop(np.asarray(record['image']), image_size), int(record['label'])

  pool = concurrent.futures.ThreadPoolExecutor(num_threads) if num_threads > 0 else None
  try:
    for s in todo:
      start = time.perf_counter()
      _write_shard(directory, s, len(bounds), bounds[s], load, encode_fn, pool, batch_size,
                   np.dtype(latent_dtype), settings)
      seconds = time.perf_counter() - start
      n = bounds[s][1] - bounds[s][0]
      logging.info('shard %d/%d: %d images in %.1fs (%.1f images/s, mirrors included)',
                   s, len(bounds), n, seconds, 2 * n / max(seconds, 1e-9))
      if after_shard is not None:
        after_shard(s)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  finished = finalize(out_dir, split, settings=settings.values, num_shards=len(bounds))
  return {'directory': str(directory), 'num_shards': len(bounds), 'owned': len(mine),
          'skipped': len(mine) - len(todo), 'written': len(todo), 'meta_written': finished}


def _write_shard(directory: Path, shard: int, num_shards: int, bounds: tuple[int, int],
                 load: Callable[[int], tuple[np.ndarray, int]], encode_fn: EncodeFn,
                 pool: concurrent.futures.Executor | None, batch_size: int,
                 dtype: np.dtype, settings: _Settings) -> None:
  path = directory / shard_name(shard, num_shards)
  tmp = directory / f'.{path.name}.tmp'
  _done_path(path).unlink(missing_ok=True)
  half = batch_size // 2
  ids = range(*bounds)
  chunks = [ids[a:a + half] for a in range(0, len(ids), half)]
  latent_shape = None
  writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
  try:
    for chunk, loaded in zip(chunks, _prefetch(pool, load, chunks)):
      # Image, mirror, image, mirror, ...: the record order.
      images = np.stack([im for image, _ in loaded for im in (image, image[:, ::-1])])
      n = len(images)
      if n < batch_size:
        images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])
      mean, std = encode_fn(images)
      mean = np.asarray(mean)[:n].astype(dtype)
      std = np.asarray(std)[:n].astype(dtype)
      if latent_shape is None:
        latent_shape = mean.shape[1:]
      for k in range(n):
        i, flip = chunk[k // 2], k % 2
        writer.write(encode_record(mean[k], std[k], label=loaded[k // 2][1], flip=bool(flip),
                                   index=i))
  finally:
    writer.close()
  os.replace(tmp, path)
  marker = {'shard': shard, 'file': path.name, 'start': bounds[0], 'stop': bounds[1],
            'num_records': 2 * len(ids), 'bytes': path.stat().st_size,
            'sha256': files.sha256(path), 'latent_shape': list(latent_shape),
            'settings': settings.values}
  files.write_text_atomic(_done_path(path), json.dumps(marker, indent=1, sort_keys=True) + '\n')


def finalize(out_dir: str | os.PathLike[str], split: str, *, settings: Mapping[str, Any],
             num_shards: int) -> bool:
  """Writes meta.json if every shard is done (True), else leaves it alone (False).

  Deterministic content (no times, hosts or process counts), written atomically, so
  several processes finishing together write the same file.
  """
  directory = Path(out_dir) / split
  settings = _Settings(dict(settings))
  markers = []
  for s in range(num_shards):
    path = directory / shard_name(s, num_shards)
    if not _shard_complete(path, s, settings):
      return False
    markers.append(files.read_json(_done_path(path)))
  shapes = sorted({tuple(m['latent_shape']) for m in markers})
  if len(shapes) > 1:
    raise ValueError(f'{directory}: shards hold latents of shapes {shapes}; the encoder '
                     'changed between runs. Delete the split folder and rerun.')
  shards = [{k: m[k] for k in ('file', 'start', 'stop', 'num_records', 'bytes', 'sha256')}
            | {'complete': True} for m in markers]
  meta = {
      'format': FORMAT, 'version': VERSION,
      'record_format': ('24-byte header <4sqiBBHHH: magic BFL1, int64 source index, int32 '
                        'label, uint8 flip, uint8 dtype (1 float16, 2 float32), uint16 h, w, '
                        'c; then mean and std, h*w*c values each, C order'),
      'split': split, 'latent_shape': list(shapes[0]),
      'num_records': sum(s['num_records'] for s in shards), 'num_shards': num_shards,
      'records': 'record 2i = source example i, record 2i+1 = its horizontal mirror',
      'settings': settings.values, 'shards': shards,
  }
  files.write_text_atomic(directory / META, json.dumps(meta, indent=1, sort_keys=True) + '\n')
  return True


# ----------------------------------------------------------------------------- reading


class LatentSource:
  """Random access to a finished cache's records (grain-compatible: len, [i], picklable).

  `source[i]` is `decode_record` of record i; `read(indices)` returns raw bytes, reading
  the shards in parallel (what `LatentGather` uses).
  """

  def __init__(self, directory: str | os.PathLike[str], meta: Mapping[str, Any]):
    self.directory = Path(directory)
    self.meta = dict(meta)
    self.latent_shape = tuple(int(d) for d in meta['latent_shape'])
    self.scaling_factor = float(meta['settings']['scaling_factor'])
    # 'file[0:n]' tells ArrayRecordDataSource the counts, so it opens no file up front.
    paths = [f'{self.directory / s["file"]}[0:{s["num_records"]}]' for s in meta['shards']]
    self._records = grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_record(self._records[index])

  def read(self, indices: Sequence[int]) -> Sequence[bytes]:
    return self._records.__getitems__([int(i) for i in indices])

  def __repr__(self) -> str:
    return f'LatentSource({str(self.directory)!r}, {len(self)} records)'


def open_latent_source(path: str | os.PathLike[str], split: str) -> LatentSource:
  """The finished cache at path/<split>; a missing or unfinished one is a clear error."""
  directory = Path(path) / split
  command = cache_command(path, split)
  if not directory.is_dir():
    raise ValueError(f'no latent cache at {directory} (config.data.path={str(path)!r}, split '
                     f'{split!r}). Build it with `{command}`.')
  meta = files.read_json(directory / META)
  if meta is None:
    done = sorted(directory.glob(f'latents-*{DONE_SUFFIX}'))
    if not done and not any(directory.glob(f'latents-*{SHARD_SUFFIX}')):
      raise ValueError(f'{directory} holds no latent shards. Build the cache with '
                       f'`{command}`.')
    marker = files.read_json(done[0]) if done else None
    of = ''
    if marker is not None:
      n, per = marker['settings']['num_examples'], marker['settings']['examples_per_shard']
      of = f' of {len(shard_bounds(n, per))}'
    raise ValueError(
        f'the latent cache at {directory} is incomplete: {len(done)} shard(s) done{of} and '
        f'no {META} yet. Rerun `{command}` (with the same flags) to finish it; done shards '
        'are kept.')
  if meta.get('format') != FORMAT or meta.get('version') != VERSION:
    raise ValueError(f'{directory / META} is not a version-{VERSION} latent cache (format '
                     f'{meta.get("format")!r}, version {meta.get("version")!r}); rebuild it '
                     f'with `{command}`.')
  missing = [s['file'] for s in meta['shards']
             if not (directory / s['file']).is_file()
             or (directory / s['file']).stat().st_size != s['bytes']]
  if missing:
    raise ValueError(
        f'the latent cache at {directory} is incomplete: {META} lists {meta["num_shards"]} '
        f'shards but {len(missing)} are missing or truncated (first: {missing[0]}). Rerun '
        f'`{command}` (with the same flags) to redo them.')
  return LatentSource(directory, meta)


@dataclasses.dataclass(frozen=True)
class LatentGather:
  """indices -> {'latent_mean', 'latent_std': float32 (B, h, w, c), 'label': int32 (B,)}.

  Picklable (grain workers). Checks the cache against the model at construction: F reads
  (config.model.image_size, image_size, config.model.in_channels) latents.
  """
  source: LatentSource
  image_size: int
  channels: int
  num_classes: int = 0

  def __post_init__(self):
    want = (self.image_size, self.image_size, self.channels)
    if self.source.latent_shape != want:
      h, w, c = self.source.latent_shape
      raise ValueError(
          f'the latent cache at {self.source.directory} holds {h}x{w}x{c} latents but the '
          f'model reads {want[0]}x{want[1]}x{want[2]} (config.model.image_size='
          f'{self.image_size}, config.model.in_channels={self.channels}). Set '
          f'config.model.image_size={h} and config.model.in_channels={c}, or rebuild the '
          'cache with a VAE/config.vae.image_size that gives the model\'s latent shape.')

  @classmethod
  def from_config(cls, source: LatentSource, config: Any) -> 'LatentGather':
    m = config.model
    return cls(source, int(m.image_size), int(m.in_channels), int(m.num_classes))

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    raw = self.source.read(indices)
    shape = (len(raw),) + self.source.latent_shape
    mean, std = np.empty(shape, np.float32), np.empty(shape, np.float32)
    labels = np.empty((len(raw),), np.int32)
    for k, data in enumerate(raw):
      record = decode_record(data)
      if record['latent_mean'].shape != self.source.latent_shape:
        raise ValueError(f'{self.source.directory}: record {int(indices[k])} has latents '
                         f'{record["latent_mean"].shape}, meta.json says '
                         f'{self.source.latent_shape}; the cache is corrupt, rebuild it.')
      mean[k], std[k], labels[k] = record['latent_mean'], record['latent_std'], record['label']
    if self.num_classes > 0 and ((labels < 0) | (labels >= self.num_classes)).any():
      bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
      raise ValueError(f'{self.source.directory}: label {bad} is outside [0, '
                       f'{self.num_classes}) set by config.model.num_classes; set it to the '
                       'dataset\'s class count.')
    return {'latent_mean': mean, 'latent_std': std, 'label': labels}
