"""Letterboxed, padded instance targets with hand-computed boxes and masks."""

import numpy as np
import pytest

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.images import list_yolo_folder, read_yolo_example
from neuroseg_jax.data.instance_targets import Letterbox, make_instance_targets, mask_boxes


@pytest.fixture
def wide():
  """A 16x32 image with two instances (rows 2..5 x cols 10..19; one pixel at 9, 0)."""
  masks = np.zeros((2, 16, 32), bool)
  masks[0, 2:6, 10:20] = True
  masks[1, 9, 0] = True
  image = np.random.default_rng(0).random((16, 32, 3)).astype(np.float32)
  return image, masks


def test_letterbox_scale_two_hand_computed(wide):
  image, masks = wide
  out = make_instance_targets(image, masks, size=64, max_instances=5)
  # scale = 64 / 32 = 2; content rows [16, 48): pad_top = 16, pad_left = 0.
  np.testing.assert_array_equal(out["letterbox"], [2.0, 16.0, 0.0])
  np.testing.assert_array_equal(out["boxes"][:2], [[20, 20, 40, 28], [0, 34, 2, 36]])
  np.testing.assert_array_equal(out["boxes"][2:], 0)
  np.testing.assert_array_equal(out["valid"], [True, True, False, False, False])
  np.testing.assert_array_equal(out["classes"], 0)
  proto = np.zeros((5, 16, 16), np.uint8)
  proto[0, 5:7, 5:10] = 1  # canvas rows [20, 28) x cols [20, 40) at stride 4.
  # instance 1 (canvas rows 34-35, cols 0-1) fills a quarter of one 4x4 block: below
  # the majority, so it has no pixel at prototype resolution.
  np.testing.assert_array_equal(out["masks"], proto)
  assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
  np.testing.assert_array_equal(out["image"][:16], 0)  # padding.
  np.testing.assert_array_equal(out["image"][48:], 0)
  np.testing.assert_array_equal(out["orig_hw"], [16, 32])


def test_integer_offset_letterbox_copies_pixels(wide):
  image, masks = wide
  out = make_instance_targets(image, masks, size=32, max_instances=2)  # scale 1, pad_top 8.
  np.testing.assert_allclose(out["image"][8:24], image, atol=1e-6)
  np.testing.assert_array_equal(out["boxes"], [[10, 10, 20, 14], [0, 17, 1, 18]])


def test_boxes_equal_mask_bounding_boxes_and_map_back():
  rng = np.random.default_rng(1)
  masks = np.zeros((6, 45, 60), bool)
  for i, (r, c) in enumerate(rng.integers(5, 40, size=(6, 2))):
    masks[i, r - 4:r + 3, c - 3:c + 5] = True
  out = make_instance_targets(np.zeros((45, 60, 1), np.float32), masks, size=96,
                              max_instances=8)
  letterbox = Letterbox.from_array(out["letterbox"])
  assert letterbox.scale == pytest.approx(96 / 60)
  canvas = Letterbox.fit((45, 60), 96)
  boxed = np.zeros((6, 96, 96), bool)  # the canvas masks by brute force: pixel centres.
  rows, cols = np.mgrid[:96, :96] + 0.5
  src_r = np.floor((rows - canvas.pad_top) / canvas.scale).astype(int)
  src_c = np.floor((cols - canvas.pad_left) / canvas.scale).astype(int)
  inside = (src_r >= 0) & (src_r < 45) & (src_c >= 0) & (src_c < 60)
  boxed[:, inside] = masks[:, src_r[inside], src_c[inside]]
  np.testing.assert_array_equal(out["boxes"][:6], mask_boxes(boxed))
  np.testing.assert_allclose(letterbox.boxes_to_original(out["boxes"][:6]), mask_boxes(masks),
                             atol=1.0 / letterbox.scale)


def test_too_many_instances_names_the_count(wide):
  image, masks = wide
  with pytest.raises(DataError, match=r"img7: 2 instances, more than max_instances=1; "
                     r"raise config.max_instances"):
    make_instance_targets(image, masks, size=32, max_instances=1, name="img7")
  with pytest.raises(DataError, match=r"img7: masks \(16, 31\) do not match the image"):
    make_instance_targets(image, masks[:, :, :31], size=32, max_instances=4, name="img7")
  with pytest.raises(ValueError, match="divisible by 4"):
    make_instance_targets(image, masks, size=30, max_instances=4)


def test_no_instances(wide):
  image, _ = wide
  out = make_instance_targets(image, np.zeros((0, 16, 32), bool), size=32, max_instances=3)
  assert not out["valid"].any() and out["masks"].shape == (3, 8, 8)


def test_real_abo_image(shared_data):
  name, image_path, label_path = list_yolo_folder(shared_data / "abo275")[0]
  image, masks = read_yolo_example(image_path, label_path)
  out = make_instance_targets(image[..., None], masks, size=640, max_instances=400, name=name)
  assert out["valid"].sum() == len(masks) == 254
  letterbox = Letterbox.from_array(out["letterbox"])
  back = letterbox.boxes_to_original(out["boxes"][out["valid"]])
  np.testing.assert_allclose(back, mask_boxes(masks), atol=1.0)
