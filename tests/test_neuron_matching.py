"""Neuron matching and P / R / F1 on hand-computed cases."""

import numpy as np
import pytest

from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import neuron_matching as nm


def disk_masks(centres, radius=4, shape=(40, 40)):
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  return np.stack([(rows - r)**2 + (cols - c)**2 <= radius**2 for r, c in centres])


def rect(shape, r0, r1, c0, c1):
  mask = np.zeros(shape, bool)
  mask[r0:r1, c0:c1] = True
  return mask


def test_mask_iou_matrix_matches_dense_reference():
  rng = np.random.default_rng(0)
  a = rng.random((5, 12, 9)) < 0.3
  b = rng.random((3, 12, 9)) < 0.5
  b[1] = False  # an empty mask: IoU 0 with everything
  inter = np.einsum("ihw,jhw->ij", a.astype(int), b.astype(int))
  union = a.sum((1, 2))[:, None] + b.sum((1, 2))[None] - inter
  np.testing.assert_allclose(nm.mask_iou_matrix(a, b), inter / union)
  assert nm.mask_iou_matrix(a, b[:0]).shape == (5, 0)
  with pytest.raises(DataError, match="image size"):
    nm.mask_iou_matrix(a, b[:, :5])


def test_exact_match_scores_one():
  truth = disk_masks([(8, 8), (20, 30), (32, 10)])
  counts = nm.match_neurons(truth.copy(), truth)
  assert counts == nm.Counts(tp=3, fp=0, fn=0)
  assert counts.precision == counts.recall == counts.f1 == 1.0


def test_hand_computed_precision_recall_f1():
  shape = (40, 40)
  truth = np.stack([rect(shape, 0, 10, 0, 10), rect(shape, 20, 30, 0, 10),
                    rect(shape, 0, 10, 20, 30)])
  pred = np.stack([
      rect(shape, 0, 10, 0, 8),  # IoU 0.8 with truth 0
      rect(shape, 20, 30, 0, 5),  # IoU 0.5 exactly with truth 1: matches
      rect(shape, 0, 10, 20, 24),  # IoU 0.4 with truth 2: no match
      rect(shape, 30, 40, 30, 40),  # nothing there
  ])
  counts = nm.match_neurons(pred, truth)
  assert counts == nm.Counts(tp=2, fp=2, fn=1)
  assert counts.precision == pytest.approx(0.5)
  assert counts.recall == pytest.approx(2 / 3)
  assert counts.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_split_instances():
  shape = (20, 20)
  truth = rect(shape, 0, 10, 0, 10)[None]
  uneven = np.stack([rect(shape, 0, 10, 0, 6), rect(shape, 0, 10, 6, 10)])  # IoU .6 / .4
  assert nm.match_neurons(uneven, truth) == nm.Counts(tp=1, fp=1, fn=0)
  thirds = np.stack([rect(shape, 0, 10, c, c + 4) for c in (0, 4, 8)])  # IoU <= .4 each
  assert nm.match_neurons(thirds, truth) == nm.Counts(tp=0, fp=3, fn=1)


def test_missed_instance_and_empty_sets():
  truth = disk_masks([(8, 8), (30, 30)])
  counts = nm.match_neurons(truth[:1], truth)
  assert counts == nm.Counts(tp=1, fp=0, fn=1)
  assert (counts.precision, counts.recall, counts.f1) == (1.0, 0.5, pytest.approx(2 / 3))
  nothing = nm.match_neurons(truth[:0], truth)
  assert nothing == nm.Counts(0, 0, 2) and nothing.precision == 1.0 and nothing.f1 == 0.0
  assert nm.match_neurons(truth[:0], truth[:0]).f1 == 1.0


def test_matching_is_one_to_one_and_maximizes_the_number_of_pairs():
  # Greedy by IoU would take (0, 0) and leave prediction 1 unmatched.
  iou = np.asarray([[0.9, 0.6], [0.55, 0.0]])
  pairs = nm.match_pairs(iou)
  assert sorted(map(tuple, pairs)) == [(0, 1), (1, 0)]
  # Two predictions on one neuron: only one of them counts.
  assert nm.counts_from_iou(np.asarray([[0.7], [0.8]])) == nm.Counts(tp=1, fp=1, fn=0)
  assert nm.match_pairs(np.asarray([[0.7], [0.8]])).tolist() == [[1, 0]]


def test_pooled_counts_sum_over_images():
  ious = [np.asarray([[0.9, 0.0], [0.0, 0.2]]), np.asarray([[0.6]]), np.zeros((0, 3))]
  pooled = nm.pooled_counts(ious)
  assert pooled == nm.Counts(tp=2, fp=1, fn=4)
  assert pooled.f1 == pytest.approx(4 / (4 + 1 + 4))


def test_best_confidence_threshold():
  # Image 1: true positives at .9 and .7, false positives at .65 and .3; image 2: a
  # true positive at .4 and a missed neuron.
  ious = [np.asarray([[0.9, 0], [0, 0.8], [0, 0], [0, 0]]), np.asarray([[0.7, 0.0]])]
  scores = [np.asarray([0.9, 0.7, 0.65, 0.3]), np.asarray([0.4])]
  threshold, counts = nm.best_confidence_threshold(ious, scores)
  # t in (.4, .65]: 2 TP 1 FP 2 FN (F1 .571); t in (.65, .7]: 2 / 0 / 2 (F1 .667);
  # t in (.3, .4]: 3 / 1 / 1 (F1 .75); t <= .3: 3 / 2 / 1 (F1 .667).
  assert threshold == pytest.approx(0.31)
  assert counts == nm.Counts(tp=3, fp=1, fn=1)
  assert nm.best_confidence_threshold(ious, scores, thresholds=[0.5, 0.66])[0] == 0.66
