"""Sample grids as PNG (runtime/images.py): layout, titles, and the PNG written back."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biflow_jax.runtime import images


def test_make_grid_places_each_image_in_row_major_order():
  tiles = np.stack([np.full((4, 4, 1), 10 * (i + 1), np.uint8) for i in range(6)])
  grid = images.make_grid(tiles, rows=2, pad=1)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
  # tile i sits at row i // 3, column i % 3, one pixel of padding around each
  for i in range(6):
    r, k = divmod(i, 3)
    assert np.all(grid[1 + r * 5:1 + r * 5 + 4, 1 + k * 5:1 + k * 5 + 4] == 10 * (i + 1))


@pytest.mark.parametrize('channels', [1, 3])
def test_titles_draw_text_above_each_grid_and_keep_the_grids(channels):
  grids = [np.full((20, 160, channels), v, np.uint8) for v in (0, 128)]
  out = images.side_by_side(grids, gap=8, titles=['G (1 NFE), w 0.5, t 0.9', 'F exact'])
  height = out.shape[0] - 20
  assert height > 0 and out.shape == (height + 20, 160 + 8 + 160, channels)
  assert np.all(out[height:, :160] == 0) and np.all(out[height:, 168:] == 128)
  strip = out[:height]
  # each title is dark text on white: both grids' strips have ink, and the first title,
  # the longer one, has more of it
  ink = [(strip[:, :160] < 128).sum(), (strip[:, 168:] < 128).sum()]
  assert ink[0] > ink[1] > 0
  assert strip.max() == 255


def test_a_title_wider_than_its_grid_is_not_cut():
  # the tiny config's grids are about 62 px wide, narrower than a decoder's title
  grid = np.zeros((30, 30, 1), np.uint8)
  title = 'F fixed-point inverse'
  out = images.titled(grid, title)
  height = out.shape[0] - 30
  wide = images.titled(np.zeros((30, 400, 1), np.uint8), title)
  # the narrow panel's strip holds the whole title: the same ink as on a wide grid
  assert out.shape[1] > 30
  assert (out[:height] < 128).sum() == (wide[:height] < 128).sum() > 0
  assert (out[:height, 30:] < 128).sum() > 0        # ink past the grid's own width
  # the grid is kept at the left, white padding fills the rest of its rows
  assert np.all(out[height:, :30] == 0) and np.all(out[height:, 30:] == 255)


def test_titles_must_be_one_per_grid():
  grids = [np.zeros((4, 4, 1), np.uint8)] * 2
  with pytest.raises(ValueError, match='one per grid'):
    images.side_by_side(grids, titles=['only one'])


def test_untitled_side_by_side_is_unchanged():
  grids = [np.zeros((4, 5, 3), np.uint8), np.ones((4, 6, 3), np.uint8)]
  out = images.side_by_side(grids, gap=2)
  assert out.shape == (4, 13, 3) and np.all(out[:, 5:7] == 255)


def test_save_png_round_trips(tmp_path):
  grid = images.titled(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3), 'w 0')
  path = images.save_png(grid, tmp_path / 'sub' / 'grid.png')
  np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
