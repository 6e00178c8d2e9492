"""COCO-style mask mAP on constructed cases."""

import numpy as np
import pytest

from neuroseg_jax.evaluation import mask_map
from neuroseg_jax.evaluation import neuron_matching


def test_perfect_detections_give_one():
  rng = np.random.default_rng(0)
  truth = rng.random((4, 16, 16)) < 0.4
  iou = neuron_matching.mask_iou_matrix(truth, truth)
  result = mask_map.mask_map([iou, iou], [rng.random(4), rng.random(4)])
  assert result == {"map50": 1.0, "map50_95": 1.0}


def test_hand_computed_ap_across_iou_thresholds():
  # Two true masks; detections by score: IoU .83 with true 0, a false positive, IoU .62
  # with true 1.
  iou = np.asarray([[0.83, 0.0], [0.0, 0.0], [0.0, 0.62]])
  scores = np.asarray([0.9, 0.8, 0.7])
  # t <= .6: hits [1, 0, 1] -> recall (.5, .5, 1), envelope precision (1, 2/3, 2/3):
  # 51 recall points read 1, 50 read 2/3.
  both = (51 + 50 * 2 / 3) / 101
  # .65 <= t <= .8: hits [1, 0, 0] -> precision 1 up to recall .5, then 0.
  first_only = 51 / 101
  aps = mask_map.mask_average_precision([iou], [scores])
  np.testing.assert_allclose(aps, [both] * 3 + [first_only] * 4 + [0.0] * 3, rtol=1e-12)
  result = mask_map.mask_map([iou], [scores])
  assert result["map50"] == pytest.approx(both)
  assert result["map50_95"] == pytest.approx((3 * both + 4 * first_only) / 10)


def test_matching_is_greedy_by_score_not_by_iou():
  # The higher-scoring detection takes the true mask at IoU .6 even though the other
  # overlaps it better; at t = .7 only the second one qualifies.
  iou = np.asarray([[0.6], [0.9]])
  scores = np.asarray([0.9, 0.5])
  np.testing.assert_array_equal(mask_map.greedy_true_positives(iou, 0.5), [True, False])
  np.testing.assert_array_equal(mask_map.greedy_true_positives(iou, 0.7), [False, True])
  aps = mask_map.mask_average_precision([iou], [scores], iou_thresholds=[0.5, 0.7])
  np.testing.assert_allclose(aps, [1.0, 0.5])  # at .7: recall 1 reached at precision 1/2


def test_ranking_is_global_across_images_and_truncated_per_image():
  # Image 1: a confident false positive; image 2: a weaker true positive.
  ious = [np.asarray([[0.0]]), np.asarray([[0.9]])]
  scores = [np.asarray([0.9]), np.asarray([0.3])]
  # Ranked: FP then TP -> recall .5 at precision 1/2: 51 points at .5, the rest 0.
  assert mask_map.mask_map(ious, scores)["map50"] == pytest.approx(51 * 0.5 / 101)
  # Dropping the detection beyond max_detections per image removes the true positive.
  ious2 = [np.asarray([[0.0], [0.9]])]
  scores2 = [np.asarray([0.9, 0.3])]
  assert mask_map.mask_map(ious2, scores2, max_detections=1)["map50"] == 0.0


def test_no_detections_and_no_truth():
  assert mask_map.mask_map([np.zeros((0, 3))], [np.zeros(0)])["map50"] == 0.0
  assert np.isnan(mask_map.mask_map([np.zeros((2, 0))], [np.ones(2)])["map50"])
