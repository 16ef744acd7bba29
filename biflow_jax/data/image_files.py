"""Image files to model-sized uint8 arrays: decode, convert channels, optionally resize.

Used by the JPEG/PNG folder and tar source of the input pipeline and by the modes that
read a user's images (likelihood, editing).

Resizing (`resize='centre_crop'`) follows the ADM preparation (guided-diffusion's
`center_crop_arr`), so a folder of any size gives what papers train on:
  1. while the short side is at least twice the target, halve the image with a box filter
     (averaging, so large photos do not alias);
  2. scale with bicubic so that the short side equals the target;
  3. crop the centre square.
`resize='none'` keeps the pixels: an image of another size is an error naming it.

Channels: grayscale, RGBA, palette and other modes are converted with PIL to the
configured count: 1 -> 'L' (luma), 3 -> 'RGB' (an alpha channel is dropped; palette
images go through RGBA first so transparency does not pick a palette entry).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

RESIZE_MODES = ('none', 'centre_crop')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


class BadImageError(ValueError):
  """A file that cannot be decoded (its name is in the message)."""


def centre_crop_resize(image: Image.Image, size: int) -> Image.Image:
  """ADM-style: box-halve while the short side >= 2 * size, bicubic to size, centre crop."""
  while min(image.size) >= 2 * size:
    image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                       resample=Image.BICUBIC)
  left, top = (image.width - size) // 2, (image.height - size) // 2
  return image.crop((left, top, left + size, top + size))


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
  """Any PIL mode -> 'L' (channels=1) or 'RGB' (channels=3). Raises ValueError otherwise."""
  if channels not in (1, 3):
    raise ValueError(f'image files decode to 1 or 3 channels, not in_channels={channels}')
  if image.mode == 'P':
    image = image.convert('RGBA')
  return image.convert('L' if channels == 1 else 'RGB')


def decode(data: bytes, name: str, channels: int, image_size: int | None = None,
           resize: str = 'none') -> np.ndarray:
  """Encoded bytes -> uint8 (H, W, channels).

  With `image_size` and resize='centre_crop' the result is (image_size, image_size, C);
  with resize='none' it must already be that size.
  Raises BadImageError naming `name` for a file PIL cannot decode, and ValueError
  naming it (and the fix) for a size mismatch under resize='none'.
  """
  if resize not in RESIZE_MODES:
    raise ValueError(f'resize={resize!r} is not one of {RESIZE_MODES}')
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      image = convert_channels(im, channels)
  except (OSError, SyntaxError, Image.DecompressionBombError) as err:
    raise BadImageError(f'cannot decode image {name}: {err}. Replace or remove the file, or '
                        'set --config.data.skip_bad_images=True to skip undecodable files '
                        '(the log counts them)') from err
  if image_size is not None:
    if resize == 'centre_crop':
      image = centre_crop_resize(image, image_size)
    elif image.size != (image_size, image_size):
      raise ValueError(
          f'{name}: the image is {image.width}x{image.height} but the model takes '
          f'{image_size}x{image_size} (config.model.image_size). Set config.data.resize='
          "'centre_crop' to centre-crop and resize it, or prepare images of that size.")
  arr = np.asarray(image, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def list_images(folder: str | os.PathLike) -> list[Path]:
  """Every .jpg/.jpeg/.png file under `folder` (recursively), sorted by relative path."""
  folder = Path(folder)
  return sorted(p for p in folder.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(folder: str | os.PathLike, image_size: int, channels: int,
                resize: str = 'centre_crop', skip_bad: bool = False
                ) -> tuple[np.ndarray, list[str], list[str]]:
  """A folder of images -> (uint8 (N, S, S, C), relative names, skipped names).

  Raises ValueError when the folder is missing or holds no image, BadImageError for an
  undecodable file unless `skip_bad` (then it is listed in `skipped`).
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise ValueError(f'{folder} is not a folder')
  arrays, names, skipped = [], [], []
  for path in list_images(folder):
    name = str(path.relative_to(folder))
    try:
      arrays.append(decode(path.read_bytes(), str(path), channels, image_size, resize))
    except BadImageError:
      if not skip_bad:
        raise
      skipped.append(name)
      continue
    names.append(name)
  if not arrays:
    raise ValueError(f'no decodable {"/".join(IMAGE_SUFFIXES)} image in {folder}')
  return np.stack(arrays), names, skipped


def check_user_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
  """Labels a user hands in (a file's, a flag's), as int32 (N,), checked before any jit.

  A class-conditional model's class embedding is indexed by the label inside traced
  code, where an index out of range is not an error but NaN (F) or another row (G's
  null class); so each label must be -1 (no class) or in [0, num_classes), integral,
  and representable as int32. `where` names the file and key or the flag. Raises
  ValueError naming the first bad label, its index, how many are bad and the range.
  With num_classes <= 0 (unconditional) labels are not used: all -1 is returned.
  """
  labels = np.asarray(labels)
  if num_classes <= 0:
    return np.full(labels.shape, -1, np.int32)
  if labels.dtype.kind == 'f':
    fractional = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
    if fractional.size:
      i = int(fractional[0])
      raise ValueError(f'{where}: label {labels.flat[i]} (index {i}) is not a whole number; '
                       f'labels are class indices in [0, {num_classes}) or -1 for none')
  elif labels.dtype.kind not in 'iub':
    raise ValueError(f'{where}: labels are {labels.dtype}, not integers: give class indices '
                     f'in [0, {num_classes}) or -1 for none')
  values = labels.astype(np.float64) if labels.dtype.kind == 'f' else labels.astype(np.int64)
  bad = np.flatnonzero((values < -1) | (values >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f'{where}: label {int(values.flat[i])} (index {i}; {bad.size} of {values.size} labels out '
        f'of range) is not a class of this model: labels must be in [0, {num_classes}) '
        f'(config.model.num_classes={num_classes}) or -1 for no class. Fix the labels, or '
        'drop them to score every image with config.likelihood.label / edit.label.')
  return values.astype(np.int32)


def read_user_images(path: str | os.PathLike, image_size: int, channels: int,
                     resize: str = 'none', skip_bad: bool = False, num_classes: int = 0
                     ) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
  """A user's images: a folder of .png/.jpg (any PIL mode) or an .npz.

  Returns (uint8 (N, S, S, C), int32 labels (N,) or None, names, skipped names).
  An .npz holds uint8 NHWC images under 'arr_0' (the ADM suite's layout) or 'images', and
  optionally labels under 'arr_1' or 'labels'; its names are `<file>[i]`. A folder's
  files are decoded and converted as `decode` says (resize as given); they have no labels.
  With num_classes > 0 an .npz's labels are checked by `check_user_labels`.
  Raises ValueError naming the problem (missing path, wrong keys, dtype or shape, a label
  that is no class of the model).
  """
  path = Path(path)
  if not path.exists():
    raise ValueError(f'{path} does not exist: give a folder of images or an .npz')
  if path.is_dir():
    images, names, skipped = read_folder(path, image_size, channels, resize, skip_bad)
    return images, None, names, skipped
  if path.suffix != '.npz':
    raise ValueError(f'{path} is neither a folder nor an .npz')
  with np.load(path) as data:
    key = next((k for k in ('arr_0', 'images') if k in data), None)
    if key is None:
      raise ValueError(f'{path} has no arr_0 or images array (it has {sorted(data.files)})')
    images = data[key]
    label_key = next((k for k in ('arr_1', 'labels') if k in data), None)
    labels = None if label_key is None else np.asarray(data[label_key])
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
      image_size, image_size, channels):
    raise ValueError(f'{path}:{key} is {images.dtype} {images.shape}; expected uint8 images '
                     f'(N, {image_size}, {image_size}, {channels}) as config.model says')
  if labels is not None and labels.shape != images.shape[:1]:
    raise ValueError(f'{path}:{label_key} has shape {labels.shape}, not ({len(images)},)')
  if labels is not None:
    labels = check_user_labels(labels, num_classes, f'{path}:{label_key}')
  return images, labels, [f'{path.name}[{i}]' for i in range(len(images))], []
