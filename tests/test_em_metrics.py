"""Connectomics metrics against hand-computed values and waterz's own evaluation."""

import math

import numpy as np
import pytest
import waterz

from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_metrics as m


def _vol(values):
  return np.asarray(values, np.uint64).reshape(1, 1, -1)


def test_arand_and_voi_by_hand():
  # gt segment 1 (4 voxels) is split in two halves; gt 2 is matched.
  gt, seg = _vol([1, 1, 1, 1, 2, 2]), _vol([1, 1, 2, 2, 3, 3])
  # sum n_ij^2 = 12, sum a_i^2 = 16 + 4 = 20, sum b_j^2 = 12: P = 1, R = 0.6, F = 0.75.
  rand = m.adapted_rand(gt, seg)
  assert rand["rand_precision"] == pytest.approx(1.0)
  assert rand["rand_recall"] == pytest.approx(0.6)
  assert rand["arand"] == pytest.approx(0.25)
  # Split: 4/6 of the voxels sit in a 50/50 split -> 2/3 bit; nothing is merged.
  voi = m.variation_of_information(gt, seg)
  assert voi["voi_split"] == pytest.approx(2 / 3)
  assert voi["voi_merge"] == pytest.approx(0.0, abs=1e-12)
  # Swapping the roles turns the split into a merge.
  swapped = m.variation_of_information(seg, gt)
  assert swapped["voi_merge"] == pytest.approx(2 / 3)
  assert swapped["voi_split"] == pytest.approx(0.0, abs=1e-12)


def test_ground_truth_background_is_ignored_and_predicted_background_is_singletons():
  gt, seg = _vol([1, 1, 1, 1, 2, 2, 0, 0]), _vol([1, 1, 2, 2, 3, 3, 3, 7])
  assert m.adapted_rand(gt, seg)["arand"] == pytest.approx(0.25)
  assert m.variation_of_information(gt, seg)["voi_split"] == pytest.approx(2 / 3)
  # gt 1 = 4 voxels, seg: 2 voxels as segment 1, 2 unlabeled singletons:
  # sum n^2 = 4 + 2, sum b^2 = 4 + 2, sum a^2 = 16 -> P = 1, R = 3/8, F = 6/11.
  rand = m.adapted_rand(_vol([1, 1, 1, 1]), _vol([1, 1, 0, 0]))
  assert rand["arand"] == pytest.approx(5 / 11)


def test_perfect_segmentation_scores_zero_under_any_relabelling():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 6, (3, 8, 8)).astype(np.uint32)
  seg = np.where(gt > 0, gt.astype(np.uint64) * 1000003 + 10**12, 0)
  assert m.adapted_rand(gt, seg)["arand"] == pytest.approx(0.0, abs=1e-12)
  voi = m.variation_of_information(gt, seg)
  assert voi["voi_split"] == pytest.approx(0.0, abs=1e-12)
  assert voi["voi_merge"] == pytest.approx(0.0, abs=1e-12)


def test_rand_and_voi_agree_with_waterz_evaluate(capfd):
  rng = np.random.default_rng(1)
  gt = rng.integers(0, 5, (4, 16, 16)).astype(np.uint64)
  seg = rng.integers(1, 7, (4, 16, 16)).astype(np.uint64)  # no 0: waterz has no singletons
  reference = waterz.evaluate(seg, gt)
  capfd.readouterr()
  table = m.overlap(gt, seg)
  rand = m.adapted_rand(gt, seg, table)
  voi = m.variation_of_information(gt, seg, table)
  assert rand["rand_recall"] == pytest.approx(reference["rand_split"], rel=1e-9)
  assert rand["rand_precision"] == pytest.approx(reference["rand_merge"], rel=1e-9)
  assert voi["voi_split"] == pytest.approx(reference["voi_split"], rel=1e-9)
  assert voi["voi_merge"] == pytest.approx(reference["voi_merge"], rel=1e-9)


def test_overlap_counts_match_a_dense_table_in_slabs(monkeypatch):
  rng = np.random.default_rng(2)
  gt = rng.integers(0, 4, (5, 6, 7)).astype(np.int32)
  seg = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8) * 40
  dense = np.zeros((4, 3), np.int64)
  np.add.at(dense, (gt.ravel(), seg.ravel() // 40), 1)
  for dense_limit in (m.DENSE_COUNT_LIMIT, 0):  # bincount and np.unique paths
    monkeypatch.setattr(m, "DENSE_COUNT_LIMIT", dense_limit)
    monkeypatch.setattr(m, "SLAB_VOXELS", 50)  # one z-plane per slab
    table = m.overlap(gt, seg)
    rows = [list(table.gt_ids).index(g) for g in range(4)]
    cols = [list(table.seg_ids).index(s) for s in (0, 40, 80)]
    np.testing.assert_array_equal(table.counts.toarray()[np.ix_(rows, cols)], dense)


def _cubes(sizes=(4, 4, 4, 4)):
  """[8, 8, 40] volume with separated 4-wide cubes labelled 1..n."""
  labels = np.zeros((8, 8, 40), np.uint32)
  for i, _ in enumerate(sizes):
    labels[2:6, 2:6, 10 * i + 2:10 * i + 6] = i + 1
  return labels


def test_ap75_exact_missed_and_split_instances():
  gt = _cubes()
  assert m.instance_ap(gt, gt * 3) == pytest.approx(1.0)
  missed = np.where(gt == 4, 0, gt)
  recall_points = 76 / 101  # recall 0.75 reached at precision 1: thresholds 0, .01, ..., .75
  assert m.instance_ap(gt, missed) == pytest.approx(recall_points)
  split = gt.copy()
  split[2:6, 2:4, 2:6] = 9  # gt 1 cut in two halves (IoU 0.5 each)
  assert m.instance_ap(gt, split, 0.75) == pytest.approx(recall_points)
  assert m.instance_ap(gt, split, 0.5) == pytest.approx(1.0)  # one half matches, one FP last
  # When the halves rank first: precision 1/3, 2/4, 3/5 at recalls .25, .5, .75.
  scores = {1: 10.0, 9: 9.0, 2: 1.0, 3: 1.0, 4: 1.0}
  assert m.instance_ap(gt, split, 0.75, scores=scores) == pytest.approx(recall_points * 0.6)


def test_ap_edge_cases():
  gt = _cubes()
  assert m.instance_ap(gt, np.zeros_like(gt)) == 0.0
  assert math.isnan(m.instance_ap(np.zeros_like(gt), gt))
  shifted = np.roll(gt, 1, axis=2)  # IoU 3/5 = 0.6
  assert m.instance_ap(gt, shifted, 0.75) == 0.0
  assert m.instance_ap(gt, shifted, 0.5) == pytest.approx(1.0)


def test_instance_scores():
  seg = _vol([0, 5, 5, 5, 7])
  prob = _vol([0, 1, 2, 3, 9]).astype(np.float32)
  assert m.instance_scores_by_size(seg) == {5: 3.0, 7: 1.0}
  assert m.instance_scores_by_mean(seg, prob) == pytest.approx({5: 2.0, 7: 9.0})


def test_foreground_dice_iou_and_errors():
  gt, pred = _vol([1, 1, 2, 2, 0, 0]), _vol([0, 0, 3, 3, 4, 4])
  scores = m.foreground_dice_iou(gt, pred)
  assert scores["dice"] == pytest.approx(0.5) and scores["iou"] == pytest.approx(2 / 6)
  assert m.foreground_dice_iou(gt * 0, pred * 0) == {"dice": 1.0, "iou": 1.0}
  with pytest.raises(DataError, match="differs"):
    m.adapted_rand(gt, pred[..., :3])
  with pytest.raises(DataError, match="integer"):
    m.variation_of_information(gt, pred.astype(np.float32))
  with pytest.raises(DataError, match="no foreground"):
    m.adapted_rand(gt * 0, pred)
