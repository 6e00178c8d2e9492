"""Post-processing: NMS, letterbox inversion of boxes and masks, fragment cleanup."""

import jax
import numpy as np

from neuroseg_jax.data.instance_targets import Letterbox
from neuroseg_jax.evaluation import yolo_postprocess as post
from yolo_head_fixtures import encode_instances

SIZE = 64


def square_instances(corners, size=SIZE, side=12):
  """Squares of `side` input pixels at the given (x, y) corners (multiples of 4)."""
  boxes = np.asarray([[x, y, x + side, y + side] for x, y in corners], np.float64)
  masks = np.zeros((len(corners), size // 4, size // 4), bool)
  for mask, (x, y) in zip(masks, corners):
    mask[y // 4:(y + side) // 4, x // 4:(x + side) // 4] = True
  return boxes, masks


def reference_masks(outputs, boxes, size=SIZE):
  """Independent mask assembly: jax.image.resize of the logits, crop, threshold."""
  logits = outputs["protos"][0] @ outputs["mask_coef"][0].T  # [Hp, Wp, A]
  used = np.flatnonzero(np.abs(outputs["mask_coef"][0]).sum(-1))
  upsampled = np.asarray(jax.image.resize(logits[..., used], (size, size, len(used)), "linear"))
  masks = np.moveaxis(upsampled > 0, -1, 0)
  for mask, (x1, y1, x2, y2) in zip(masks, np.asarray(boxes, int)):
    inside = np.zeros_like(mask)
    inside[y1:y2, x1:x2] = True
    mask &= inside
  return masks


def test_nms_keeps_a_box_whose_suppressor_was_itself_suppressed():
  boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [6, 0, 16, 10], [30, 30, 40, 40]], float)
  scores = np.asarray([0.9, 0.8, 0.7, 0.95])
  # IoU(0,1) = 9/11 > .5 -> 1 dropped; IoU(0,2) = 4/16 < .5 and 1 is gone -> 2 kept.
  np.testing.assert_array_equal(post.nms(boxes, scores, 0.5), [3, 0, 2])
  np.testing.assert_array_equal(post.nms(boxes, scores, 0.95), [3, 0, 1, 2])


def test_identity_letterbox_recovers_boxes_masks_and_filters_by_confidence():
  boxes, masks = square_instances([(4, 4), (32, 8), (8, 40)])
  outputs = encode_instances(boxes, masks, SIZE, scores=[0.9, 0.6, 0.2])
  settings = post.PostprocessSettings(conf_threshold=0.25, min_area=1)
  [found] = post.postprocess_batch(outputs, [(SIZE, SIZE)], settings=settings)
  np.testing.assert_allclose(found.scores, [0.9, 0.6], rtol=1e-5)
  np.testing.assert_allclose(found.boxes, boxes[:2], atol=1e-3)
  expected = reference_masks(outputs, boxes)[:2]
  np.testing.assert_array_equal(found.masks, expected)
  # Bilinear resampling of +-8 logits reproduces the squares up to their corners.
  squares = np.repeat(np.repeat(masks[:2], 4, axis=1), 4, axis=2)
  assert (found.masks != squares).sum() == 2 * 4
  np.testing.assert_array_equal(found.classes, [0, 0])


def test_letterboxed_box_and_mask_map_back_to_original_pixels():
  # A 100 x 60 (H x W) image letterboxed into 64: scale .64, width 38.4, left pad 12.8.
  letterbox = Letterbox(scale=0.64, pad_top=0.0, pad_left=12.8)
  original_box = np.asarray([10.0, 20.0, 40.0, 60.0])
  input_box = original_box * 0.64 + [12.8, 0, 12.8, 0]
  outputs = encode_instances(input_box[None], np.ones((1, 16, 16), bool), SIZE)
  # Prototype = signed distance to the vertical line x_in = 30 (linear, so bilinear
  # resampling is exact): the mask is the part of the box right of that line.
  centres = np.arange(16) * 4 + 2.0
  outputs["protos"][0, :, :, 0] = (centres - 30.0)[None, :]
  settings = post.PostprocessSettings(min_area=1, keep_largest_component=False)
  [found] = post.postprocess_batch(outputs, [(100, 60)], [letterbox], settings)
  np.testing.assert_allclose(found.boxes[0], original_box, atol=1e-3)
  cols = np.arange(60)
  right_of_line = (cols + 0.5) * 0.64 + 12.8 > 30.0
  expected = np.zeros((100, 60), bool)
  expected[20:60, 10:40] = right_of_line[None, 10:40]
  assert found.masks.shape == (1, 100, 60)
  np.testing.assert_array_equal(found.masks[0], expected)


def test_fragments_are_cleaned_and_tiny_instances_removed():
  boxes, masks = square_instances([(4, 4), (40, 40)], side=16)
  outputs = encode_instances(boxes, masks, SIZE, scores=[0.9, 0.8])
  protos = outputs["protos"][0]
  protos[1:5, 1:5, 0] = -8.0
  protos[1:5, 1:3, 0] = 8.0  # instance 0: 2 x 4 cells ...
  protos[4, 4, 0] = 8.0  # ... plus a one-cell island inside its box
  protos[10:14, 10:14, 1] = -8.0
  protos[11, 11, 1] = 8.0  # instance 1: a single cell (16 pixels)
  [cleaned] = post.postprocess_batch(
      outputs, [(SIZE, SIZE)],
      settings=post.PostprocessSettings(min_area=20, keep_largest_component=True))
  [raw] = post.postprocess_batch(
      outputs, [(SIZE, SIZE)],
      settings=post.PostprocessSettings(min_area=1, keep_largest_component=False))
  expected = reference_masks(outputs, boxes)
  np.testing.assert_array_equal(raw.masks, expected)
  island = np.zeros((SIZE, SIZE), bool)
  island[16:20, 16:20] = True
  assert (expected[0] & island).sum() > 0 and expected[1].sum() < 20
  assert len(cleaned) == 1
  np.testing.assert_array_equal(cleaned.masks[0], expected[0] & ~island)


def test_resample_matrix_rows_are_interpolation_weights():
  weights = post.resample_matrix(10, 0.8, 2.0, 6, 4.0)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
  # Pixel 3: input coordinate 3.5 * .8 + 2 = 4.8 -> source 4.8 / 4 - .5 = .7.
  np.testing.assert_allclose(weights[3, :2], [0.3, 0.7], rtol=1e-5)


def test_unletterbox_image_crops_the_padding():
  image = np.zeros((SIZE, SIZE), np.float32)
  image[:, 16:48] = np.arange(32, dtype=np.float32)[None]
  letterbox = Letterbox(scale=1.0, pad_top=0.0, pad_left=16.0)
  np.testing.assert_allclose(post.unletterbox_image(image, letterbox, (64, 32)), image[:, 16:48])
