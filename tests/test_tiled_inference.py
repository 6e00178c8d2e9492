"""Whole-field segmentation: tiles agree exactly with untiled inference, one hit per neuron."""

import numpy as np
import pytest

from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.evaluation import tiled_inference
from neuroseg_jax.evaluation import yolo_postprocess as post
from yolo_head_fixtures import oracle_batch_predict_fn as predict_fn
from yolo_head_fixtures import oracle_predict_fn

SETTINGS = post.PostprocessSettings(min_area=1)


def image_with_squares(height, width, corners, side=12):
  image = np.zeros((height, width, 2), np.float32)
  for x, y in corners:
    image[y:y + side, x:x + side] = 1.0
  return image


def untiled(image, canvas):
  """Reference: the whole image (zero-padded to a square canvas) through the oracle."""
  padded = np.zeros((canvas, canvas, image.shape[-1]), np.float32)
  padded[:image.shape[0], :image.shape[1]] = image
  return post.postprocess_batch(oracle_predict_fn(padded[None]), [image.shape[:2]],
                                settings=SETTINGS)[0]


def assert_same_instances(found, expected):
  iou = neuron_matching.mask_iou_matrix(found.masks, expected.masks)
  pairs = neuron_matching.match_pairs(iou, 0.99)
  assert len(found) == len(expected) == len(pairs)
  np.testing.assert_array_equal(iou[pairs[:, 0], pairs[:, 1]], 1.0)
  np.testing.assert_allclose(found.boxes[pairs[:, 0]], expected.boxes[pairs[:, 1]], atol=1e-3)
  np.testing.assert_allclose(found.scores[pairs[:, 0]], expected.scores[pairs[:, 1]], rtol=1e-6)


def test_tile_origins():
  assert tiled_inference.tile_origins(160, 64, 24) == [0, 40, 80, 96]
  assert tiled_inference.tile_origins(112, 64, 24) == [0, 40, 48]
  assert tiled_inference.tile_origins(64, 64, 16) == [0]
  assert tiled_inference.tile_origins(40, 64, 16) == [0]


@pytest.mark.parametrize("height,width", [(64, 64), (48, 56)])
def test_single_tile_reproduces_untiled_inference(height, width):
  image = image_with_squares(height, width, [(4, 8), (28, 24), (36, 40)])
  found = tiled_inference.segment_field(image, predict_fn, 64, 16, SETTINGS, batch_size=2)
  expected = untiled(image, 64)
  assert len(expected) == 3
  assert_same_instances(found, expected)


def test_neurons_across_tile_borders_are_found_exactly_once():
  # 112 x 160 image, 64-pixel tiles overlapping by 24: tile rows start at 0, 40, 48 and
  # columns at 0, 40, 80, 96. Squares: inside one tile, inside the overlap of two
  # tiles, across a vertical border, across a corner, at the image edge.
  corners = [(8, 8), (44, 12), (60, 60), (100, 28), (148, 96), (120, 84), (20, 92)]
  image = image_with_squares(112, 160, corners)
  found = tiled_inference.segment_field(image, predict_fn, 64, 24, SETTINGS, batch_size=5)
  expected = untiled(image, 160)
  assert len(expected) == len(corners)
  assert_same_instances(found, expected)
  truth = np.stack([image_with_squares(112, 160, [c])[..., 0] for c in corners]) > 0
  assert neuron_matching.match_neurons(found.masks, truth) == neuron_matching.Counts(7, 0, 0)


def test_without_border_rule_cut_neurons_would_be_duplicated():
  # Sanity check of the test set-up: the square across x = 64 is seen cut by tile 0
  # and whole by tile 1, so per-tile detections contain it twice.
  image = image_with_squares(64, 112, [(56, 20)])
  per_tile = [post.postprocess_batch(oracle_predict_fn(image[None, :, x0:x0 + 64]),
                                     [(64, 64)], settings=SETTINGS)[0]
              for x0 in tiled_inference.tile_origins(112, 64, 16)]
  assert [len(p) for p in per_tile] == [1, 1]
  found = tiled_inference.segment_field(image, predict_fn, 64, 16, SETTINGS)
  assert len(found) == 1 and found.masks[0].sum() == 144 - 4  # bilinear rounds 4 corners


def test_zoom_segments_magnified_tiles_and_answers_in_image_pixels():
  # With zoom 2, 128 px inputs overlapping by 48 cover the same 64 px tiles (24 px
  # overlap) of the image as the test above, each magnified 2x; the squares come back
  # once each, in image pixels, the magnification's bilinear edge adding under a pixel.
  corners = [(8, 8), (44, 12), (60, 60), (100, 28), (148, 96), (120, 84), (20, 92)]
  image = image_with_squares(112, 160, corners)
  calls = []

  def counting_predict_fn(batch):
    calls.append(batch["image"].shape)
    return predict_fn(batch)

  found = tiled_inference.segment_field(image, counting_predict_fn, 128, 48, SETTINGS,
                                        batch_size=5, zoom=2.0)
  # 3 x 4 tiles in 3 batches of 5 (the last one padded), each input 128 px.
  assert sum(shape[0] for shape in calls) == 15 and calls[0][1:3] == (128, 128)
  truth = np.stack([image_with_squares(112, 160, [c])[..., 0] for c in corners]) > 0
  iou = neuron_matching.mask_iou_matrix(found.masks, truth)
  pairs = neuron_matching.match_pairs(iou, 0.5)
  assert len(found) == len(pairs) == len(corners)
  assert iou[pairs[:, 0], pairs[:, 1]].min() > 0.8
  true_boxes = np.array([[x, y, x + 12, y + 12] for x, y in corners], np.float32)
  np.testing.assert_allclose(found.boxes[pairs[:, 0]], true_boxes[pairs[:, 1]], atol=1.0)


def test_bad_arguments_raise_data_error():
  with pytest.raises(DataError, match="overlap"):
    tiled_inference.segment_field(np.zeros((64, 64, 1)), predict_fn, 64, 64)
  with pytest.raises(DataError, match=r"\[H, W, C\]"):
    tiled_inference.segment_field(np.zeros((64, 64)), predict_fn, 64, 16)
  with pytest.raises(DataError, match="zoom"):
    tiled_inference.segment_field(np.zeros((64, 64, 1)), predict_fn, 64, 16, zoom=0.0)
