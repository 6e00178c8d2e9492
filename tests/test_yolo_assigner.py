"""Task-aligned assigner on hand-made cases with known answers (64 x 64 input, A = 84)."""

import functools

import jax
import numpy as np

from neuroseg_jax.losses import yolo_assigner
from neuroseg_jax.models import box_geometry

POINTS, STRIDES = box_geometry.make_anchors((64, 64))
PIXEL_POINTS = POINTS * STRIDES
NUM_ANCHORS = len(POINTS)


MAX_GTS = 3
_ASSIGN = {topk: jax.jit(functools.partial(yolo_assigner.assign_targets, topk=topk))
           for topk in (10, NUM_ANCHORS)}


def assign(scores, pred_boxes, gt_boxes, gt_valid=None, topk=10):
  """Batch-of-one wrapper: scores [A], pred_boxes [A, 4], gt_boxes [M <= 3, 4].

  Ground truth is padded to 3 slots (invalid, zero boxes) so every call shares one
  compiled assigner per topk.
  """
  num = len(gt_boxes)
  boxes = np.zeros((1, MAX_GTS, 4), np.float32)
  boxes[0, :num] = gt_boxes
  valid = np.zeros((1, MAX_GTS), bool)
  valid[0, :num] = True if gt_valid is None else gt_valid
  out = _ASSIGN[topk](np.asarray(scores, np.float32)[None, :, None],
                      np.asarray(pred_boxes, np.float32)[None], PIXEL_POINTS,
                      np.zeros((1, MAX_GTS), np.int32), boxes, valid)
  return jax.tree.map(lambda a: np.asarray(a[0]), out)


def p3_index(row, col):
  return row * 8 + col


def test_anchors_strictly_inside_the_box_are_assigned_when_fewer_than_topk():
  gt = [8.0, 24.0, 40.0, 40.0]
  out = assign(np.full(NUM_ANCHORS, 0.5), np.tile(gt, (NUM_ANCHORS, 1)), [gt])
  # P3 centres x in {12, 20, 28, 36}, y in {28, 36}; no P4/P5 centre is strictly inside.
  expected = sorted(p3_index(r, c) for r in (3, 4) for c in (1, 2, 3, 4))
  assert np.flatnonzero(out.foreground).tolist() == expected
  np.testing.assert_array_equal(out.target_index[expected], 0)
  np.testing.assert_allclose(out.target_boxes[expected], np.tile(gt, (8, 1)))
  # Equal metrics and CIoU = 1: every positive's soft target is 1, background 0.
  np.testing.assert_allclose(out.target_scores[expected, 0], 1.0, atol=1e-5)
  assert out.target_scores[~out.foreground].max() == 0


def test_topk_keeps_the_best_aligned_anchors_and_normalizes_scores():
  gt = [0.0, 0.0, 64.0, 64.0]  # every anchor centre is inside
  scores = np.random.default_rng(0).uniform(0.05, 0.95, NUM_ANCHORS)
  out = assign(scores, np.tile(gt, (NUM_ANCHORS, 1)), [gt])
  top10 = np.sort(np.argsort(-scores)[:10])
  assert np.flatnonzero(out.foreground).tolist() == top10.tolist()
  # align = score^0.5 * 1^6; normalized by the best align, times the best CIoU (1).
  expected = np.sqrt(scores[top10]) / np.sqrt(scores[top10].max())
  np.testing.assert_allclose(out.target_scores[top10, 0], expected, rtol=1e-5)


def test_metric_uses_ciou_power_beta():
  gt = np.asarray([0.0, 0.0, 64.0, 64.0])
  pred = np.tile(gt, (NUM_ANCHORS, 1))
  pred[5] = [0.0, 0.0, 64.0, 32.0]  # same centre line, IoU 1/2, shifted centre
  pred[6] = [0.0, 0.0, 64.0, 48.0]
  out = assign(np.full(NUM_ANCHORS, 0.5), pred, [gt], topk=NUM_ANCHORS)
  # Scores are equal, so targets are (CIoU / best CIoU)^6 * best CIoU with best CIoU = 1.
  ciou = np.asarray(box_geometry.complete_iou(pred[[5, 6]], gt))
  np.testing.assert_allclose(out.target_scores[[5, 6], 0], ciou**6, rtol=1e-4)
  assert out.target_scores[5, 0] < out.target_scores[6, 0] < out.target_scores[7, 0]


def test_anchor_claimed_by_two_boxes_goes_to_the_larger_overlap():
  box_a, box_b = [0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 48.0, 48.0]
  shared = [p3_index(r, c) for r in (2, 3) for c in (2, 3)]  # centres 20, 28
  pred = np.tile(box_a, (NUM_ANCHORS, 1))
  pred[shared[:2]] = box_b
  out = assign(np.full(NUM_ANCHORS, 0.5), pred, [box_a, box_b], topk=NUM_ANCHORS)
  np.testing.assert_array_equal(out.target_index[shared], [1, 1, 0, 0])
  np.testing.assert_allclose(out.target_boxes[shared[0]], box_b)
  only_a = p3_index(0, 0)
  assert out.foreground[only_a] and out.target_index[only_a] == 0
  assert out.foreground[shared].all()


def test_padding_boxes_are_ignored():
  gt = [8.0, 24.0, 40.0, 40.0]
  pad = [0.0, 0.0, 64.0, 64.0]
  pred = np.tile(gt, (NUM_ANCHORS, 1))
  scores = np.full(NUM_ANCHORS, 0.5)
  alone = assign(scores, pred, [gt])
  padded = assign(scores, pred, [pad, gt, pad], gt_valid=[False, True, False])
  np.testing.assert_array_equal(padded.foreground, alone.foreground)
  np.testing.assert_array_equal(padded.target_index[alone.foreground], 1)
  np.testing.assert_allclose(padded.target_scores, alone.target_scores, atol=1e-6)
  nothing = assign(scores, pred, [pad], gt_valid=[False])
  assert not nothing.foreground.any() and nothing.target_scores.max() == 0


def test_normalization_eps_matters_for_tiny_overlaps():
  # A 12-pixel box, one anchor centre inside it, every prediction a 64-pixel box:
  # CIoU ~ .034, metric a = .5^.5 * CIoU^6 ~ 1e-9, comparable to the default eps.
  gt = np.asarray([24.0, 24.0, 36.0, 36.0])
  pred = np.tile([0.0, 0.0, 64.0, 64.0], (NUM_ANCHORS, 1))
  ciou = float(box_geometry.complete_iou(pred[0], gt))
  metric = 0.5**0.5 * ciou**6
  default = assign(np.full(NUM_ANCHORS, 0.5), pred, [gt])
  assert np.flatnonzero(default.foreground).tolist() == [p3_index(3, 3)]
  target = default.target_scores[p3_index(3, 3), 0]
  np.testing.assert_allclose(target, ciou * metric / (metric + 1e-9), rtol=1e-4)
  assert target < 0.6 * ciou
  tiny_eps = jax.jit(functools.partial(yolo_assigner.assign_targets, eps=1e-30))
  out = tiny_eps(np.full((1, NUM_ANCHORS, 1), 0.5, np.float32), pred[None].astype(np.float32),
                 PIXEL_POINTS, np.zeros((1, 1), np.int32), gt[None, None].astype(np.float32),
                 np.ones((1, 1), bool))
  np.testing.assert_allclose(out.target_scores[0, p3_index(3, 3), 0], ciou, rtol=1e-4)
