"""Image grids as PNG: how every sample this project makes is looked at."""
from __future__ import annotations

import io
import os

from etils import epath

import numpy as np
from PIL import Image

from biflow_jax.runtime import files


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 (values outside are clipped)."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int | None = None, pad: int = 2) -> np.ndarray:
  """(N, H, W, C) uint8 -> one (rows*H', cols*W', C) uint8 grid with `pad` pixel borders."""
  n, h, w, c = images.shape
  rows = rows or int(np.ceil(np.sqrt(n)))
  cols = int(np.ceil(n / rows))
  grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + k * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(grid: np.ndarray, path: str | os.PathLike) -> epath.Path:
  """Writes atomically (temp file + rename), so a crash never leaves half a PNG.

  Local paths and gs:// alike (etils.epath).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format='PNG')
  files.write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
  return path


def side_by_side(grids: list[np.ndarray], gap: int = 8) -> np.ndarray:
  """Grids of equal height -> one image, separated by white columns."""
  if len(grids) == 1:
    return grids[0]
  h, _, c = grids[0].shape
  spacer = np.full((h, gap, c), 255, np.uint8)
  parts = []
  for g in grids:
    parts += [g, spacer]
  return np.concatenate(parts[:-1], axis=1)
