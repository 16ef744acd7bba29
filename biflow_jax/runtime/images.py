"""Image grids as PNG: how every sample this project makes is looked at."""
from __future__ import annotations

import io
import os

from etils import epath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def titled(grid: np.ndarray, title: str, height: int = 14) -> np.ndarray:
  """(H, W, C) uint8 grid -> (height + H, W', C): `title` in black on a white strip above it
  (PIL's built-in bitmap font, so no font file is needed). W' = W, or the title's width when
  that is wider: the grid is then padded with white on its right, so no title is cut."""
  h, w, c = grid.shape
  font = ImageFont.load_default()
  margin = 2
  width = max(w, margin + int(np.ceil(font.getlength(title))) + margin)
  strip = Image.new('L', (width, height), 255)
  ImageDraw.Draw(strip).text((margin, 1), title, fill=0, font=font)
  strip = np.repeat(np.asarray(strip, np.uint8)[..., None], c, axis=-1)
  if width > w:
    grid = np.concatenate([grid, np.full((h, width - w, c), 255, np.uint8)], axis=1)
  return np.concatenate([strip, grid], axis=0)


def side_by_side(grids: list[np.ndarray], gap: int = 8,
                 titles: list[str] | None = None) -> np.ndarray:
  """Grids of equal height -> one image, separated by white columns; with `titles` (one
  per grid), each grid gets its title above it (`titled`).

  ValueError when titles are given and are not one per grid."""
  if titles is not None:
    if len(titles) != len(grids):
      raise ValueError(f'{len(titles)} titles for {len(grids)} grids: give one per grid')
    grids = [titled(g, t) for g, t in zip(grids, titles)]
  if len(grids) == 1:
    return grids[0]
  h, _, c = grids[0].shape
  spacer = np.full((h, gap, c), 255, np.uint8)
  parts = []
  for g in grids:
    parts += [g, spacer]
  return np.concatenate(parts[:-1], axis=1)
