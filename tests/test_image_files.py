"""Image folders of any size: ADM-style centre crop and resize, channel conversion, bad files."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from biflow_jax import config_lib
from biflow_jax.data import image_files, input_pipeline as ip


def encode(image: Image.Image, fmt: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def framed(width: int, height: int, mode: str = 'RGB') -> Image.Image:
  """A red image with a green centre square of a third of the short side."""
  arr = np.zeros((height, width, 3), np.uint8)
  arr[..., 0] = 255
  side = min(width, height) // 3
  top, left = (height - side) // 2, (width - side) // 2
  arr[top:top + side, left:left + side] = (0, 255, 0)
  return Image.fromarray(arr).convert(mode)


def test_centre_crop_resize_halves_then_bicubic_then_crops():
  # 600x300 -> box halvings to 150x75 (75 < 2*32), bicubic to 64x32, centre crop 32x32
  out = image_files.centre_crop_resize(framed(600, 300), 32)
  assert out.size == (32, 32)
  arr = np.asarray(out)
  assert tuple(arr[16, 16]) == (0, 255, 0)        # the centre survives
  assert arr[0, 0, 0] > 200 and arr[0, 0, 1] < 50  # the border stays red
  # the short side is kept whole: the green square spans a third of it
  green = (arr[:, 16, 1] > 128).sum()
  assert 9 <= green <= 12
  # upscaling works too
  assert image_files.centre_crop_resize(framed(10, 20), 32).size == (32, 32)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', 'I;16'])
@pytest.mark.parametrize('channels', [1, 3])
def test_any_mode_converts_to_the_channel_count(mode, channels):
  source = framed(40, 30)
  source = source.convert(mode) if mode != 'I;16' else source.convert('L').convert('I;16')
  arr = image_files.decode(encode(source), 'x.png', channels, 16, 'centre_crop')
  assert arr.shape == (16, 16, channels) and arr.dtype == np.uint8
  if mode != 'I;16':  # 16-bit grey is scaled differently by PIL; only the shape is ours
    assert arr[8, 8].max() > 100  # the centre is green (or its luma), not black


def test_wrong_size_without_resize_names_the_file_and_the_fix():
  with pytest.raises(ValueError, match=r"photo.png.*40x30.*16x16.*data.resize='centre_crop'"):
    image_files.decode(encode(framed(40, 30)), 'photo.png', 3, 16, 'none')


def test_undecodable_file_is_named_or_skipped(tmp_path):
  for i in range(2):
    (tmp_path / f'{i}.png').write_bytes(encode(framed(20, 20)))
  (tmp_path / 'broken.jpg').write_bytes(b'not an image')
  with pytest.raises(image_files.BadImageError, match='broken.jpg'):
    image_files.read_folder(tmp_path, 8, 3)
  images, names, skipped = image_files.read_folder(tmp_path, 8, 3, skip_bad=True)
  assert images.shape == (2, 8, 8, 3) and names == ['0.png', '1.png'] and skipped == ['broken.jpg']


def _tar_of_mixed_sizes(path):
  members = {'train/cat/a.jpg': encode(framed(64, 48), 'JPEG'),
             'train/cat/b.png': encode(framed(30, 90, 'P')),
             'train/dog/c.png': encode(framed(256, 256, 'RGBA')),
             'train/dog/d.jpg': b'\xff\xd8 truncated'}
  with tarfile.open(path, 'w') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def test_tar_of_any_size_through_the_pipeline(tmp_path):
  tar = _tar_of_mixed_sizes(tmp_path / 'data.tar')
  with pytest.raises(ValueError, match='train/dog/d.jpg'):
    ip.load_jpeg_images(tar, 'train', image_size=16, resize='centre_crop')
  images, labels, classes = ip.load_jpeg_images(tar, 'train', image_size=16,
                                                resize='centre_crop', skip_bad=True)
  assert images.shape == (3, 16, 16, 3) and labels.tolist() == [0, 0, 1]
  assert classes == ['cat', 'dog']
  with pytest.raises(ValueError, match=r"data.resize='centre_crop'"):
    ip.load_jpeg_images(tar, 'train', image_size=16, skip_bad=True)  # resize='none'


def test_config_resize_field_is_validated():
  config = config_lib.base_config()
  config.data.resize = 'stretch'
  with pytest.raises(ValueError, match=r"data.resize='stretch' is not one of \('none', 'centre_crop'\)"):
    config_lib.validate(config)


# ------------------------------------------------- labels a user hands in (issue 32, item 1)


@pytest.mark.parametrize('bad,shown', [(10, '10'), (255, '255'), (-5, '-5')])
def test_npz_label_outside_the_classes_is_an_error_naming_file_value_and_range(
    tmp_path, bad, shown):
  """Out-of-range labels went straight into the jitted scorer (NaN bits/dim, exit 0), and
  -5 was scored as unlabelled."""
  labels = np.arange(8, dtype=np.uint8 if bad == 255 else np.int64) % 10
  labels[3] = bad
  np.savez(tmp_path / 'eight.npz', images=np.zeros((8, 28, 28, 1), np.uint8), labels=labels)
  with pytest.raises(ValueError, match=rf'eight.npz:labels: label {shown} \(index 3; 1 of 8 '
                                       r'labels out of range\).*\[0, 10\).*-1 for no class'):
    image_files.read_user_images(tmp_path / 'eight.npz', 28, 1, num_classes=10)


def test_user_labels_accepted_and_refused():
  ok = image_files.check_user_labels(np.array([-1, 0, 9], np.int64), 10, 'f')
  assert ok.dtype == np.int32 and ok.tolist() == [-1, 0, 9]
  assert image_files.check_user_labels(np.array([3.0, -1.0]), 10, 'f').tolist() == [3, -1]
  # An unconditional model uses no label: all -1, whatever the file says.
  assert image_files.check_user_labels(np.array([42]), 0, 'f').tolist() == [-1]
  with pytest.raises(ValueError, match=r'label 2.5 \(index 1\) is not a whole number'):
    image_files.check_user_labels(np.array([1.0, 2.5]), 10, 'f')
  with pytest.raises(ValueError, match='not integers'):
    image_files.check_user_labels(np.array(['a']), 10, 'f')
  with pytest.raises(ValueError, match=r'label 4294967299 '):  # not wrapped to 3 by int32
    image_files.check_user_labels(np.array([2 ** 32 + 3]), 10, 'f')
