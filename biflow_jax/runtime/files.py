"""Small file helpers shared by the caches and outputs: atomic writes, strict JSON (no NaN or
Infinity), tolerant JSON reads, file hashes. Standard library only.

A crash never leaves a half-written file under the final name: writes go to a temporary
name beside the target (with the pid, so concurrent writers never share one) and are
renamed over it. Paths may be `pathlib.Path` or `etils.epath.Path` (so a gs:// workdir
works): only methods both share are used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
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


def json_safe(obj: Any, where: str = '') -> tuple[Any, list[str]]:
  """(obj as plain JSON values, where it was non-finite).

  numpy scalars and arrays become Python numbers and lists; a NaN or infinite float
  becomes the string 'non-finite (nan)' (or inf, -inf), since JSON has no such number
  (Python would write the non-standard NaN / Infinity, which strict parsers reject).
  The second value lists the paths replaced, e.g. ['summary.mean'].
  """
  replaced: list[str] = []

  def walk(value, path):
    if isinstance(value, Mapping):
      return {str(k): walk(v, f'{path}.{k}' if path else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, 'tolist') and hasattr(value, 'ndim')
                                            and value.ndim > 0):
      return [walk(v, f'{path}[{i}]') for i, v in enumerate(list(value))]
    if hasattr(value, 'item') and hasattr(value, 'dtype'):  # a numpy scalar or 0-d array
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      replaced.append(path)
      return f'non-finite ({value})'
    return value

  return walk(obj, where), replaced


def json_text(obj: Any, what: str = 'JSON', indent: int | None = 2) -> str:
  """Standard JSON of `obj` (never NaN or Infinity: `json_safe`), with a warning naming
  each non-finite value that was written as a string. `what` names the file in it."""
  safe, replaced = json_safe(obj)
  if replaced:
    logging.getLogger(__name__).warning('%s: %d non-finite value(s) written as strings: %s', what, len(replaced),
                    ', '.join(replaced[:10]) + (' ...' if len(replaced) > 10 else ''))
  return json.dumps(safe, indent=indent, allow_nan=False)


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
