"""Reading and writing one large array of an .npz batch by batch (the ADM suite's format).

An .npz is a zip of .npy members (`arr_0.npy`, ...). The suite's batches hold 10,000 to
50,000 uint8 images (2-10 GB at 256x256), so neither side ever holds the whole array:
`read_header` reads a member's shape and dtype only, `iter_rows` streams its rows, and
`NpzWriter` appends rows to `arr_0` as they are made and adds the small arrays at the end.
Files written here load with `np.load` and the suite's own reader. The writer's target
goes through `etils.epath` (a gs:// workdir works): the zip is built in a local file, which
is renamed into place, or copied to an object store in one stream.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from etils import epath


def _member(zf: zipfile.ZipFile, path: Path, name: str) -> str:
  member = f'{name}.npy'
  if member not in zf.namelist():
    found = sorted(n[:-4] for n in zf.namelist() if n.endswith('.npy'))
    raise ValueError(f'{path}: no array {name!r} in the .npz (it holds {found})')
  return member


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
  elif version == (2, 0):
    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
  else:
    raise ValueError(f'{where}: unsupported .npy format version {version}')
  return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran)


def open_npz(path: str | os.PathLike[str]) -> zipfile.ZipFile:
  """The .npz at `path` as a zip; a clear ValueError when it is missing or not an .npz."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f'{path}: no such file')
  try:
    return zipfile.ZipFile(path, 'r')
  except zipfile.BadZipFile:
    raise ValueError(f'{path} is not an .npz file (not a zip archive of .npy arrays); '
                     'the ADM suite stores batches with np.savez') from None


def read_header(path: str | os.PathLike[str], name: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of array `name` in the .npz, reading only its header."""
  path = Path(path)
  with open_npz(path) as zf, zf.open(_member(zf, path, name)) as f:
    shape, dtype, _ = _read_npy_header(f, f'{path}:{name}')
  return shape, dtype


def array_names(path: str | os.PathLike[str]) -> list[str]:
  """Names of the arrays an .npz holds."""
  with open_npz(path) as zf:
    return sorted(n[:-4] for n in zf.namelist() if n.endswith('.npy'))


def iter_rows(path: str | os.PathLike[str], name: str, batch: int,
              stop: int | None = None) -> Iterator[np.ndarray]:
  """Consecutive row batches (at most `batch` rows; the first `stop` rows when given) of
  array `name`, read from the file as they are needed."""
  if batch <= 0:
    raise ValueError(f'batch must be positive, got {batch}')
  path = Path(path)
  with open_npz(path) as zf, zf.open(_member(zf, path, name)) as f:
    shape, dtype, fortran = _read_npy_header(f, f'{path}:{name}')
    if fortran or dtype.hasobject or not shape:
      raise ValueError(f'{path}:{name}: expected a C-ordered numeric array with rows, got '
                       f'{"Fortran-ordered " if fortran else ""}{dtype} {shape}')
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    total = shape[0] if stop is None else min(shape[0], int(stop))
    for start in range(0, total, batch):
      n = min(batch, total - start)
      data = f.read(n * row_bytes)
      if len(data) != n * row_bytes:
        raise ValueError(f'{path}:{name} is truncated: rows {start}..{start + n} missing')
      yield np.frombuffer(data, dtype).reshape((n,) + shape[1:])


class NpzWriter:
  """Writes `<path>.npz` with `arr_0` of a declared shape appended row batch by row batch,
  then further small arrays (`extra`) at `close()`; the file appears only when complete.

      with NpzWriter(path, (50000, 256, 256, 3), np.uint8) as w:
        for images in batches: w.append(images)
        w.extra['arr_1'] = labels
  """

  def __init__(self, path: epath.PathLike, shape: tuple[int, ...], dtype):
    self.path = epath.Path(path)
    self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    self.rows = 0
    self.extra: dict[str, np.ndarray] = {}
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # zipfile seeks back to patch headers, which object-store files cannot: build the zip
    # in a local file (beside the target when it is local, so the final rename is atomic).
    self._local = '://' not in os.fspath(self.path)
    if self._local:
      self._tmp = Path(os.fspath(self.path)).with_name(f'.{self.path.name}.{os.getpid()}.tmp')
    else:
      fd, name = tempfile.mkstemp(suffix='.npz.tmp')
      os.close(fd)
      self._tmp = Path(name)
    self._zip = zipfile.ZipFile(self._tmp, 'w', zipfile.ZIP_STORED, allowZip64=True)
    self._f = self._zip.open('arr_0.npy', 'w', force_zip64=True)
    header = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False,
              'shape': self.shape}
    np.lib.format.write_array_header_1_0(self._f, header)

  def append(self, rows: np.ndarray) -> None:
    """Appends (n, *shape[1:]) rows of the declared dtype."""
    rows = np.asarray(rows)
    if rows.dtype != self.dtype or rows.shape[1:] != self.shape[1:]:
      raise ValueError(f'{self.path}: rows must be {self.dtype} (n, {self.shape[1:]}), got '
                       f'{rows.dtype} {rows.shape}')
    if self.rows + rows.shape[0] > self.shape[0]:
      raise ValueError(f'{self.path}: more than the declared {self.shape[0]} rows')
    self._f.write(np.ascontiguousarray(rows).tobytes())
    self.rows += rows.shape[0]

  def close(self) -> epath.Path:
    """Checks the row count, adds `extra`, and moves the file into place."""
    if self.rows != self.shape[0]:
      self.abort()
      raise ValueError(f'{self.path}: {self.rows} rows written, {self.shape[0]} declared')
    self._f.close()
    try:
      for name, value in self.extra.items():
        with self._zip.open(f'{name}.npy', 'w', force_zip64=True) as f:
          np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    except BaseException:
      self.abort()
      raise
    self._zip.close()
    if self._local:
      os.replace(self._tmp, os.fspath(self.path))
    else:
      try:
        with open(self._tmp, 'rb') as src, self.path.open('wb') as dst:
          shutil.copyfileobj(src, dst, 1 << 24)
      finally:
        self._tmp.unlink(missing_ok=True)
    return self.path

  def abort(self) -> None:
    """Drops the partial file."""
    if not self._f.closed:
      self._f.close()
    self._zip.close()
    self._tmp.unlink(missing_ok=True)

  def __enter__(self) -> 'NpzWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    elif self._tmp.exists():
      self.abort()
