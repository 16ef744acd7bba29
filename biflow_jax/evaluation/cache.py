"""A directory of arrays computed once and reused only while their inputs are unchanged.

Each entry is `<kind>-<key>.npz` (the arrays) with `<kind>-<key>.json` beside it (its
fingerprint and a free-form record). The key is a hash of the fingerprint
(`fingerprint.key`), so entries for different inputs live side by side and switching back
and forth recomputes nothing; an entry is used only when the stored fingerprint equals
today's, field by field. A miss logs why: which fields differ from the newest entry of the
same kind, or that there was none. Files are written under temporary names and renamed,
so a crash never leaves an entry that reads as whole. The directory goes through
`etils.epath`, as training's workdir does, so it may be on gs://.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Callable

import numpy as np
from absl import logging
from etils import epath

from biflow_jax.evaluation import fingerprint as fp
from biflow_jax.runtime import files


def load_or_compute(directory: epath.PathLike, kind: str, fingerprint: dict[str, Any],
                    compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(arrays, record) of the entry `kind` for `fingerprint`, computed by `compute()` on a miss.

  compute() -> (arrays: name -> np.ndarray, info: JSON-able dict stored with them).
  The returned record is JSON-able: {'file', 'key', 'recomputed' (bool), 'reason',
  'fingerprint', 'info'}; eval.json keeps it so a reader sees what the numbers rest on.
  """
  if not kind or '-' in kind or '/' in kind:
    raise ValueError(f'cache kind {kind!r} must be a non-empty name without "-" or "/"')
  directory = epath.Path(directory)
  fingerprint = fp.canonical(fingerprint)
  entry_key = fp.key(fingerprint)
  npz, meta_path = directory / f'{kind}-{entry_key}.npz', directory / f'{kind}-{entry_key}.json'
  meta = files.read_json(meta_path) if npz.is_file() else None
  if meta is not None and meta.get('fingerprint') == fingerprint:
    with npz.open('rb') as f, np.load(f) as data:
      arrays = {k: data[k] for k in data.files}
    logging.info('eval cache: reusing %s (fingerprint unchanged)', npz)
    return arrays, {'file': str(npz), 'key': entry_key, 'recomputed': False,
                    'reason': 'fingerprint unchanged', 'fingerprint': fingerprint,
                    'info': meta.get('info', {})}
  reason = _miss_reason(directory, kind, fingerprint, meta)
  logging.warning('eval cache: computing %s: %s', npz, reason)
  arrays, info = compute()
  info = fp.canonical(info)
  directory.mkdir(parents=True, exist_ok=True)

  def write_npz(tmp: epath.Path) -> None:
    buffer = io.BytesIO()  # zip writing seeks, which object-store files cannot
    np.savez(buffer, **arrays)
    tmp.write_bytes(buffer.getvalue())

  files.write_atomic(npz, write_npz)
  text = json.dumps({'kind': kind, 'key': entry_key, 'fingerprint': fingerprint, 'info': info},
                    indent=1, sort_keys=True) + '\n'
  files.write_text_atomic(meta_path, text)
  return arrays, {'file': str(npz), 'key': entry_key, 'recomputed': True, 'reason': reason,
                  'fingerprint': fingerprint, 'info': info}


def _miss_reason(directory: epath.Path, kind: str, fingerprint: dict[str, Any],
                 same_key_meta: dict[str, Any] | None) -> str:
  """Why there is no usable entry, naming the fields that changed since the newest one."""
  if same_key_meta is not None:  # a key collision or an edited file: never trust it
    return 'the entry under this key holds another fingerprint; replacing it'
  others = sorted(directory.glob(f'{kind}-*.json'), key=_mtime)
  for path in reversed(others):
    meta = files.read_json(path)
    if meta is None or 'fingerprint' not in meta:
      continue
    changed = fp.differences(meta['fingerprint'], fingerprint)
    return f'inputs differ from {path.name}: ' + '; '.join(changed)
  return f'no cached {kind} entry in {directory}'


def _mtime(path: epath.Path) -> float:
  """Modification time; sub-second for local files (epath's stat rounds to seconds)."""
  try:
    return os.stat(os.fspath(path)).st_mtime
  except OSError:
    return float(path.stat().mtime)
