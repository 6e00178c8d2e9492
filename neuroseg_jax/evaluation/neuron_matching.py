"""Neuron-level matching and precision / recall / F1, the way the field reports them.

A predicted and a true neuron match when their mask IoU >= 0.5; matching is
one-to-one (Hungarian, scipy `linear_sum_assignment`), maximising first the number
of matched pairs, then their summed IoU. Per image: TP = matched pairs, FP =
unmatched predictions, FN = unmatched true neurons; pooled numbers sum TP / FP / FN
over images before forming ratios.

Empty-set convention: a ratio 0 / 0 counts as 1 (no predictions -> precision 1,
no true neurons -> recall 1); F1 = 2 TP / (2 TP + FP + FN), also 1 when 0 / 0.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import optimize
from scipy import sparse

from neuroseg_jax.errors import DataError

MATCH_IOU = 0.5


def sparse_rows(masks: np.ndarray) -> sparse.csr_matrix:
  """[N, H, W] binary masks -> [N, H * W] sparse float32 rows (1 on the foreground)."""
  masks = np.asarray(masks)
  size = int(np.prod(masks.shape[1:]))
  rows, cols = np.nonzero(masks.reshape(len(masks), size))
  return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                           shape=(len(masks), size))


def mask_iou_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
  """IoU of every pair of binary masks: [Na, H, W], [Nb, H, W] -> [Na, Nb] float64.

  Sparse matrix product of the flattened masks (cost ~ number of foreground pixels);
  an empty pair (union 0) has IoU 0.
  """
  if np.shape(masks_a)[1:] != np.shape(masks_b)[1:]:
    raise DataError("masks", f"predicted and true masks differ in image size: "
                    f"{np.shape(masks_a)} vs {np.shape(masks_b)}")
  if len(masks_a) == 0 or len(masks_b) == 0:
    return np.zeros((len(masks_a), len(masks_b)))
  rows_a, rows_b = sparse_rows(masks_a), sparse_rows(masks_b)
  inter = np.asarray((rows_a @ rows_b.T).todense(), np.float64)
  area_a = np.asarray(rows_a.sum(axis=1), np.float64)
  area_b = np.asarray(rows_b.sum(axis=1), np.float64).T
  union = area_a + area_b - inter
  return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_pairs(iou: np.ndarray, iou_threshold: float = MATCH_IOU) -> np.ndarray:
  """One-to-one matching on an [Np, Nt] IoU matrix -> [K, 2] (pred, true) index pairs.

  Only pairs with IoU >= iou_threshold may match; among maximum-cardinality
  matchings the one with the largest summed IoU is returned.
  """
  eligible = iou >= iou_threshold
  rows, cols = np.flatnonzero(eligible.any(1)), np.flatnonzero(eligible.any(0))
  if not len(rows):
    return np.zeros((0, 2), int)
  sub_iou, sub_ok = iou[np.ix_(rows, cols)], eligible[np.ix_(rows, cols)]
  # Weight 1 + IoU / (n + 1) per eligible pair: the IoU part of a whole matching is
  # below 1, so one more pair always wins, and IoU breaks ties between equal counts.
  weight = np.where(sub_ok, 1 + sub_iou / (min(sub_ok.shape) + 1), 0.0)
  pred, true = optimize.linear_sum_assignment(weight, maximize=True)
  ok = sub_ok[pred, true]
  return np.stack([rows[pred[ok]], cols[true[ok]]], axis=1)


@dataclasses.dataclass(frozen=True)
class Counts:
  """Matched (tp), spurious (fp) and missed (fn) neurons."""
  tp: int = 0
  fp: int = 0
  fn: int = 0

  def __add__(self, other: Counts) -> Counts:
    return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

  @property
  def precision(self) -> float:
    return _ratio(self.tp, self.tp + self.fp)

  @property
  def recall(self) -> float:
    return _ratio(self.tp, self.tp + self.fn)

  @property
  def f1(self) -> float:
    return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def _ratio(numerator: int, denominator: int) -> float:
  return float(numerator / denominator) if denominator else 1.0


def counts_from_iou(iou: np.ndarray, iou_threshold: float = MATCH_IOU) -> Counts:
  """[Np, Nt] IoU matrix -> Counts."""
  tp = len(match_pairs(iou, iou_threshold))
  return Counts(tp, iou.shape[0] - tp, iou.shape[1] - tp)


def match_neurons(pred_masks: np.ndarray, true_masks: np.ndarray,
                  iou_threshold: float = MATCH_IOU) -> Counts:
  """[Np, H, W], [Nt, H, W] binary masks of one image -> Counts."""
  return counts_from_iou(mask_iou_matrix(pred_masks, true_masks), iou_threshold)


def pooled_counts(ious: Sequence[np.ndarray], iou_threshold: float = MATCH_IOU) -> Counts:
  """Counts summed over images, each given by its [Np_i, Nt_i] IoU matrix."""
  return sum((counts_from_iou(iou, iou_threshold) for iou in ious), Counts())


DEFAULT_THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.01), 2)


def best_confidence_threshold(
    ious: Sequence[np.ndarray], scores: Sequence[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    iou_threshold: float = MATCH_IOU) -> tuple[float, Counts]:
  """Confidence threshold maximising pooled F1 over a validation set.

  Args:
    ious: per image, [Np_i, Nt_i] IoU of all predictions (at a low confidence).
    scores: per image, [Np_i] prediction confidences.
    thresholds: candidate thresholds (a prediction is kept when score >= t).
  Returns:
    (threshold, pooled Counts at it); ties go to the lowest threshold.
  """
  best = None
  for threshold in thresholds:
    counts = pooled_counts(
        [iou[np.asarray(s) >= threshold] for iou, s in zip(ious, scores)], iou_threshold)
    if best is None or counts.f1 > best[1].f1:
      best = (float(threshold), counts)
  return best
