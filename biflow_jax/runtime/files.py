"""Small file helpers shared by the caches: atomic writes, tolerant JSON reads, file hashes.

A crash never leaves a half-written file under the final name: writes go to a temporary
name beside the target (with the pid, so concurrent writers never share one) and are
renamed over it. Paths may be `pathlib.Path` or `etils.epath.Path` (so a gs:// workdir
works): only methods both share are used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
  """write(tmp) to a temporary file beside `path`, then rename it to `path`.

  `path` may be a pathlib.Path or an etils.epath.Path (gs:// included, where the rename
  is the store's copy-and-delete). The temporary name is hidden and ends in `.tmp`, so a
  crash mid-write never leaves a file that looks like a finished `.json`/`.npz`/`.png`.
  """
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  write(tmp)
  tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> None:
  write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict[str, Any] | None:
  """The JSON object in `path`; None when it is missing or unreadable (never raises)."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def sha256(path: str | os.PathLike[str]) -> str:
  """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()
