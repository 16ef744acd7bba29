"""`--mode=edit`: inpainting, interpolation and class swap with a trained F and G.

    --config.edit.task=inpaint      --config.edit.mask=left|right|top|bottom|centre|MASK.png
    --config.edit.task=interpolate  --config.edit.between=images|noise
    --config.edit.task=class_swap

Images are the first config.edit.num held-out images, or config.edit.input (a folder
of images, sized per data.resize, or an .npz as `image_files.read_user_images` reads).
Every task works in noise space (docs/method.md §6) and decodes with G in one pass:
- inpaint: z = M * F(x~) + (1 - M) * eps, x = G(z); the mask names the region that is
  regenerated (a PNG mask: white = regenerate), the rest is kept. Rows: input with the
  region grey, result, original.
- interpolate: spherical interpolation between F(x~) of image pairs (0, 1), (2, 3), ...
  or between two fresh noises at G's temperature (sample.reverse_temperature),
  config.edit.steps frames per row.
- class_swap: z = F(x~, y) with the image's class y (edit.label when it has none), then
  G(z, c) for every class c: one row per image, one column per class.
Writes DIR/edit/<task>.png (a grid) and DIR/edit/<task>.npz (uint8 images, and inputs).
"""
from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from biflow_jax.data import image_files, input_pipeline
from biflow_jax.inference import decoders, sampling
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.objective import primitives
from biflow_jax.runtime import images
from biflow_jax.training import restore

TASKS = ('inpaint', 'interpolate', 'class_swap')
MASKS = ('left', 'right', 'top', 'bottom', 'centre')
EDIT_SEED = 2718


def region_mask(mask: str, image_size: int, warn: bool = True) -> np.ndarray:
  """(S, S) float32, 1 where the image is regenerated: a named half, the centre box (the
  middle half of each side), or a PNG file (grey level >= 128 = regenerate).

  A square PNG of another size is resized to S x S (nearest neighbour) with a warning
  naming both sizes; a PNG that is not square is a ValueError (resizing would change
  the region's shape). An all-black PNG regenerates nothing (warned). `warn=False`
  checks without logging (edit.check runs it once before the run's own call).
  """
  s = image_size
  m = np.zeros((s, s), np.float32)
  if mask == 'left':
    m[:, :s // 2] = 1
  elif mask == 'right':
    m[:, s // 2:] = 1
  elif mask == 'top':
    m[:s // 2] = 1
  elif mask == 'bottom':
    m[s // 2:] = 1
  elif mask == 'centre':
    m[s // 4:s - s // 4, s // 4:s - s // 4] = 1
  else:
    path = Path(mask)
    if not path.is_file():
      raise ValueError(f'config.edit.mask={mask!r} is neither one of {MASKS} nor a PNG file')
    try:
      with Image.open(io.BytesIO(path.read_bytes())) as im:
        grey = im.convert('L')
    except OSError as e:
      raise ValueError(f'config.edit.mask={mask!r} cannot be read as an image ({e})') from e
    if grey.width != grey.height:
      raise ValueError(f'config.edit.mask={mask!r} is {grey.width}x{grey.height}, not square, '
                       f'and the images are {s}x{s}: draw the mask at {s}x{s} (a square of '
                       'another size is resized)')
    if grey.size != (s, s):
      if warn:
        logging.warning('config.edit.mask=%s is %dx%d and the images %dx%d: resized to %dx%d '
                        '(nearest neighbour)', mask, grey.width, grey.height, s, s, s, s)
      grey = grey.resize((s, s), Image.NEAREST)
    m = (np.asarray(grey) >= 128).astype(np.float32)
    if warn and not m.any():
      logging.warning('config.edit.mask=%s is all black: nothing is regenerated (white = '
                      'regenerate)', mask)
  return m


def check(config: ml_collections.ConfigDict) -> None:
  """What fails before the checkpoint is read."""
  e = config.edit
  if e.task not in TASKS:
    raise ValueError(f'config.edit.task={e.task!r} is not one of {TASKS}')
  if not config.reverse.enabled:
    raise ValueError('--mode=edit decodes with G: this run has none (config.reverse.enabled=False)')
  if e.task == 'inpaint':
    region_mask(e.mask, config.model.image_size, warn=False)
  if e.task == 'interpolate' and e.between not in ('images', 'noise'):
    raise ValueError(f"config.edit.between={e.between!r} is not 'images' or 'noise'")
  if e.task == 'class_swap' and not config.model.num_classes:
    raise ValueError('class_swap needs a class-conditional model (config.model.num_classes > 0)')
  if e.num <= 0 or e.steps < 2:
    raise ValueError('config.edit.num must be positive and config.edit.steps at least 2')
  # edit.label reaches G's class embedding inside jitted code (interpolation, images
  # without labels), where an index out of range reads another row or NaN: check it here.
  image_files.check_user_labels(np.asarray([e.label]), config.model.num_classes,
                                f'config.edit.label={e.label}')


def _inputs(config) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 NHWC images, int32 labels) to edit: held-out or config.edit.input."""
  e, m = config.edit, config.model
  if e.input:
    x, labels, _, _ = image_files.read_user_images(e.input, m.image_size, m.in_channels,
                                                   config.data.resize, config.data.skip_bad_images,
                                                   num_classes=m.num_classes)
    if labels is None:
      labels = np.full((len(x),), int(e.label), np.int32)
    return x[:e.num], labels[:e.num]
  heldout = input_pipeline.load_heldout(config, e.num)
  return heldout['image'][:e.num], heldout['label'][:e.num]


def _encode(config, flow: ForwardFlow, forward_params, x: np.ndarray, labels: np.ndarray, rng):
  """z = F(x~), x~ = x + sigma * eps (the input distribution F was trained on)."""
  xf = jnp.asarray(primitives.from_uint8(x))
  x_noisy = xf + float(config.objective.noise_sigma) * jax.random.normal(rng, xf.shape)
  y = jnp.asarray(labels) if flow.num_classes else None
  z, _, _ = flow.apply({'params': forward_params}, x_noisy, y)
  return z


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> Path:
  """Runs config.edit.task on the latest checkpoint; returns the PNG written."""
  check(config)
  e = config.edit
  x, labels = _inputs(config)
  exp, state, step = restore.restore_run(config, workdir)
  params, flow = state.ema, exp.models.flow
  guidance = decoders.decoder_guidance(config, 'reverse')
  denoise = decoders.default_denoise(config, 'reverse')
  rng = jax.random.PRNGKey(EDIT_SEED)
  rows, extra = [], {}
  if e.task == 'inpaint':
    region = region_mask(e.mask, config.model.image_size)
    keep = np.broadcast_to(1.0 - region, x.shape[:3]).astype(np.float32)
    out = sampling.make_inpainter(config, guidance, denoise)(
        params, rng, jnp.asarray(primitives.from_uint8(x)), keep, labels)
    shown = np.where(region[None, :, :, None] > 0, 128, x).astype(np.uint8)
    rows = [shown, images.to_uint8(np.asarray(out)), x]
    extra = dict(inputs=x, mask=region)
  elif e.task == 'interpolate':
    interpolate = sampling.make_interpolator(config, guidance, denoise)
    if e.between == 'images':
      if len(x) < 2:
        raise ValueError('interpolate between images needs at least 2 images')
      z = _encode(config, flow, params['forward'], x, labels, rng)
      pairs = [(z[i], z[i + 1], labels[i]) for i in range(0, len(x) - 1, 2)]
    else:
      # G decodes these, so they are drawn at G's temperature (sample.reverse_temperature),
      # as G's own samples, eval and the export are; F's would give other frames.
      z = sampling.sample_noise(config, rng, 2 * e.num, decoders.reverse_temperature(config))
      label = int(e.label) if config.model.num_classes else -1
      pairs = [(z[2 * i], z[2 * i + 1], label) for i in range(e.num)]
    for z0, z1, label in pairs:
      rows.append(images.to_uint8(np.asarray(interpolate(params, z0, z1, int(label), e.steps))))
    rows = [np.stack(col) for col in zip(*rows)]  # grid columns = frames
    extra = dict(inputs=x) if e.between == 'images' else {}
  else:  # class_swap
    z = _encode(config, flow, params['forward'], x, labels, rng)
    decode = jax.jit(sampling.make_decoder(config, 'reverse', denoise),
                     static_argnames=('guidance',))
    for c in range(config.model.num_classes):
      out = decode(params, z, jnp.full((len(x),), c, jnp.int32), guidance=guidance)
      rows.append(images.to_uint8(np.asarray(out)))
    rows = [x] + rows
    extra = dict(inputs=x, labels=labels)
  # rows: list of (N, H, W, C) arrays -> a grid with one column per list entry
  stacked = np.stack(rows, axis=1)  # (N, columns, H, W, C)
  n, cols = stacked.shape[:2]
  grid = images.make_grid(stacked.reshape((n * cols,) + stacked.shape[2:]), rows=n)
  out_dir = epath.Path(workdir) / 'edit'
  path = images.save_png(grid, out_dir / f'{e.task}.png')
  with (out_dir / f'{e.task}.npz').open('wb') as f:
    np.savez(f, images=stacked, **extra)
  logging.info('edit %s at step %d: %d rows x %d columns -> %s (+ .npz)', e.task, step, n, cols,
               path)
  return Path(str(path))
