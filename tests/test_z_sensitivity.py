"""tools/z_sensitivity's reference numbers on arrays whose answers are known by hand."""
import numpy as np
import pytest

from biflow_jax.tools import z_sensitivity


def test_spread_is_the_mean_per_pixel_std_within_each_class():
  images = np.array([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
  labels = np.array([0, 0, 1, 1])
  # class 0: per-pixel std 1 and 2 -> 1.5; class 1: identical images -> 0
  np.testing.assert_allclose(z_sensitivity.spread(images, labels, 2), [1.5, 0.0])


def test_class_mean_mse_is_the_error_of_outputting_each_class_mean():
  images = np.array([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [3.0, 1.0]])
  labels = np.array([0, 0, 1, 1])
  # class 0 mean (1, 2): squared errors 1 + 4, 1 + 4; class 1 mean (2, 1): 1 + 0, 1 + 0
  assert z_sensitivity.class_mean_mse(images, labels) == pytest.approx(12 / 8)
  # a decoder that returns each image itself would score 0; one class per image scores 0
  assert z_sensitivity.class_mean_mse(images, np.arange(4)) == 0.0


def test_train_images_are_training_digits_not_held_out_ones():
  from test_train import parse_config_file, ROOT
  config = parse_config_file(str(ROOT / 'configs' / 'mnist.py'))[0]
  x, y = z_sensitivity.split_images(config, 'train', 50)
  held_x, _ = z_sensitivity.heldout_images(config)
  assert x.shape == (50, 28, 28, 1) and y.shape == (50,) and y.dtype == np.int32
  assert x.min() >= -1.0 and x.max() <= 1.0 and len(np.unique(y)) > 5
  # no training digit is also a held-out one (the bundled split is disjoint)
  flat_held = {h.tobytes() for h in held_x}
  assert not any(t.tobytes() in flat_held for t in x)
