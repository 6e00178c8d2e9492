"""Connectomics segmentation metrics from sparse contingency tables (host side, NumPy).

All functions take integer label volumes of equal shape (any rank, typically
[D, H, W]); 0 is background. Definitions:
  * Adapted Rand error (SNEMI3D): with n_ij the voxel counts of ground-truth segment i
    and predicted segment j over ground-truth foreground (gt == 0 is ignored), and
    a_i, b_j the row and column sums, Rand precision = sum n_ij^2 / sum b_j^2 and
    recall = sum n_ij^2 / sum a_i^2; arand = 1 - 2 P R / (P + R). As in the SNEMI3D
    script, predicted background (0) inside ground-truth foreground counts as
    singletons: every such voxel is its own one-voxel segment.
  * Variation of information, in bits over ground-truth foreground:
    split = H(seg | gt) (ground-truth segments cut into pieces),
    merge = H(gt | seg) (predicted segments spanning several ground-truth ones).
    Predicted 0 is an ordinary segment here (as in CREMI / waterz).
  * Instance AP (MitoEM, COCO-style): predicted instances ranked by score (size, the
    default, or e.g. mean probability) are matched greedily to the unmatched ground
    truth instance of highest IoU if that IoU >= threshold; AP is the mean over 101
    recall points of the interpolated precision. AP-75 is the MitoEM metric.
  * Voxel Dice / IoU of the foregrounds (label != 0, or boolean masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import fastremap
import numpy as np
from scipy import sparse

from neuroseg_jax.errors import DataError

DENSE_COUNT_LIMIT = 1 << 24  # bincount over (gt, seg) pairs below this many cells.
SLAB_VOXELS = 1 << 24        # pair counting in slabs of about this many voxels.


@dataclass(frozen=True)
class Overlap:
  """Sparse contingency table of two label volumes.

  gt_ids [Ng] and seg_ids [Ns]: the distinct labels, index 0 always label 0 (its row or
  column is empty when the volume has no background); counts: scipy.sparse CSR
  [Ng, Ns] int64, counts[i, j] = #voxels with gt == gt_ids[i] and seg == seg_ids[j].
  """
  gt_ids: np.ndarray
  seg_ids: np.ndarray
  counts: sparse.csr_matrix

  def without_gt_background(self) -> "Overlap":
    return Overlap(self.gt_ids[1:], self.seg_ids, self.counts[1:])


def _compact(labels: np.ndarray):
  """labels -> (ids 0..K-1 with 0 kept at 0, [K] original label of each id)."""
  if labels.dtype == bool:
    labels = labels.view(np.uint8)
  compact, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
  ids = np.zeros(len(mapping) + (0 not in mapping), labels.dtype)
  for old, new in mapping.items():
    ids[new] = old
  return compact, ids


def _check_pair(gt: np.ndarray, seg: np.ndarray, name: str):
  gt, seg = np.asarray(gt), np.asarray(seg)
  if gt.shape != seg.shape:
    raise DataError(name, f"shape {seg.shape} differs from the ground truth's {gt.shape}")
  if gt.ndim == 0:
    raise DataError(name, "expected a label volume, got a scalar")
  for array, what in ((gt, "ground truth"), (seg, name)):
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
      raise DataError(what, f"expected integer labels, got dtype {array.dtype}")
  return gt, seg


def overlap(gt: np.ndarray, seg: np.ndarray, name: str = "segmentation") -> Overlap:
  """Contingency table of gt and seg (same shape, integer labels, slabs along axis 0).

  Cost: O(voxels) relabelling (fastremap), then pair counting per slab of about
  SLAB_VOXELS voxels (np.bincount when the table is small, np.unique of paired keys
  otherwise); beyond the compact label copies, memory stays at a few slabs.
  """
  gt, seg = _check_pair(gt, seg, name)
  gt_compact, gt_ids = _compact(gt)
  seg_compact, seg_ids = _compact(seg)
  n_seg, cells = len(seg_ids), len(gt_ids) * len(seg_ids)
  rows_per_slab = max(1, SLAB_VOXELS // max(1, gt[0].size))
  table = sparse.csr_matrix((len(gt_ids), n_seg), dtype=np.int64)
  for start in range(0, len(gt), rows_per_slab):
    keys = (gt_compact[start:start + rows_per_slab].astype(np.int64).ravel() * n_seg
            + seg_compact[start:start + rows_per_slab].ravel())
    if cells <= DENSE_COUNT_LIMIT:
      counts = np.bincount(keys, minlength=cells)
      keys = np.flatnonzero(counts)
      counts = counts[keys]
    else:
      keys, counts = np.unique(keys, return_counts=True)
    table = table + sparse.csr_matrix((counts.astype(np.int64), (keys // n_seg, keys % n_seg)),
                                      shape=table.shape)
  return Overlap(gt_ids, seg_ids, table)


def _squares(values) -> float:
  values = np.asarray(values, np.float64).ravel()
  return float(values @ values)


def adapted_rand(gt: np.ndarray, seg: np.ndarray, table: Overlap | None = None) -> dict:
  """SNEMI3D adapted Rand error -> {"arand", "rand_precision", "rand_recall"} (floats).

  0 for a perfect segmentation; 1 - F-score of Rand precision and recall.
  """
  table = (table if table is not None else overlap(gt, seg)).without_gt_background()
  counts = table.counts
  singletons = float(counts[:, 0].sum())  # predicted background: one-voxel segments
  counts = counts[:, 1:]
  sum_pairs = _squares(counts.data) + singletons
  sum_gt = _squares(table.counts.sum(axis=1))
  sum_seg = _squares(counts.sum(axis=0)) + singletons
  if sum_gt == 0:
    raise DataError("ground truth", "has no foreground voxels; the adapted Rand error is undefined")
  precision, recall = sum_pairs / sum_seg, sum_pairs / sum_gt
  fscore = 2.0 * precision * recall / (precision + recall)
  return {"arand": 1.0 - fscore, "rand_precision": precision, "rand_recall": recall}


def _entropy(counts, total: float) -> float:
  p = np.asarray(counts, np.float64).ravel() / total
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


def variation_of_information(gt: np.ndarray, seg: np.ndarray,
                             table: Overlap | None = None) -> dict:
  """VI over ground-truth foreground -> {"voi_split": H(seg|gt), "voi_merge": H(gt|seg)} (bits)."""
  counts = (table if table is not None else overlap(gt, seg)).without_gt_background().counts
  total = float(counts.sum())
  if total == 0:
    raise DataError("ground truth", "has no foreground voxels; the VI is undefined")
  joint = _entropy(counts.data, total)
  return {"voi_split": joint - _entropy(counts.sum(axis=1), total),
          "voi_merge": joint - _entropy(counts.sum(axis=0), total)}


def instance_scores_by_size(seg: np.ndarray) -> dict[int, float]:
  """{instance id: voxel count} for the nonzero labels of seg (the default AP score)."""
  ids, counts = fastremap.unique(np.asarray(seg), return_counts=True)
  return {int(i): float(c) for i, c in zip(ids, counts) if i != 0}


def instance_scores_by_mean(seg: np.ndarray, probability: np.ndarray) -> dict[int, float]:
  """{instance id: mean of `probability` ([same shape as seg]) over the instance}."""
  compact, ids = _compact(np.asarray(seg))
  sums = np.bincount(compact.ravel(), weights=np.asarray(probability, np.float64).ravel())
  sizes = np.bincount(compact.ravel())
  return {int(i): float(s / n) for i, s, n in zip(ids, sums, sizes) if i != 0}


def instance_ap(gt: np.ndarray, seg: np.ndarray, iou_threshold: float = 0.75,
                scores: dict[int, float] | None = None, table: Overlap | None = None) -> float:
  """COCO-style average precision of the instances of seg against those of gt.

  Args:
    gt, seg: integer label volumes, 0 = background.
    iou_threshold: 0.75 for MitoEM's AP-75, 0.5 for AP50.
    scores: {predicted id: confidence}; default `instance_scores_by_size(seg)`.
      Ties rank the smaller label first.

  Returns:
    AP in [0, 1]; NaN when gt has no instances (undefined, as COCO's -1).
  """
  table = table if table is not None else overlap(gt, seg)
  inter = table.counts[1:, 1:].tocsc()  # [Ng, Ns] foreground overlaps, columns = predictions
  gt_sizes = np.asarray(table.counts[1:].sum(axis=1)).ravel()
  seg_sizes = np.asarray(table.counts[:, 1:].sum(axis=0)).ravel()
  if not len(gt_sizes):
    return float("nan")
  if scores is None:
    score = seg_sizes.astype(np.float64)
  else:
    score = np.array([scores.get(int(i), 0.0) for i in table.seg_ids[1:]], np.float64)
  order = np.lexsort((table.seg_ids[1:], -score))
  matched = np.zeros(len(gt_sizes), bool)
  true_positive = np.zeros(len(order), bool)
  for rank, j in enumerate(order):
    rows = inter.indices[inter.indptr[j]:inter.indptr[j + 1]]
    shared = inter.data[inter.indptr[j]:inter.indptr[j + 1]]
    iou = shared / (gt_sizes[rows] + seg_sizes[j] - shared)
    iou[matched[rows]] = -1.0
    if len(iou) and iou.max() >= iou_threshold:
      matched[rows[np.argmax(iou)]] = True
      true_positive[rank] = True
  return _interpolated_ap(true_positive, len(gt_sizes))


def _interpolated_ap(true_positive: np.ndarray, num_gt: int) -> float:
  """101-point interpolated AP (COCO) of a ranked [P] bool list of detections."""
  if not len(true_positive):
    return 0.0
  tp = np.cumsum(true_positive)
  recall = tp / num_gt
  precision = tp / np.arange(1, len(tp) + 1)
  precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at >= recall
  thresholds = np.linspace(0.0, 1.0, 101)
  where = np.searchsorted(recall, thresholds, side="left")
  sampled = np.where(where < len(precision), precision[np.minimum(where, len(precision) - 1)], 0.0)
  return float(sampled.mean())


def foreground_dice_iou(gt: np.ndarray, pred: np.ndarray) -> dict:
  """Voxel overlap of the foregrounds (nonzero / True) -> {"dice", "iou"}; 1.0 if both empty."""
  gt, pred = _check_pair(gt, pred, "prediction")
  gt, pred = gt != 0, pred != 0
  both = float(np.count_nonzero(gt & pred))
  total = float(np.count_nonzero(gt) + np.count_nonzero(pred))
  if total == 0:
    return {"dice": 1.0, "iou": 1.0}
  return {"dice": 2.0 * both / total, "iou": both / (total - both)}
