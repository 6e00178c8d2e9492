"""COCO-style mask average precision for one class (mAP50 and mAP50-95).

Follows pycocotools `COCOeval` for segm with one category, no crowd regions and a
single area range: per image, detections sorted by score (stable) and truncated to
`max_detections`; at each IoU threshold t, each detection in turn takes the
unmatched true mask of highest IoU if that IoU >= t (greedy by score). Detections
of all images are then ranked by score; precision is made monotone
(non-increasing in recall) and read at 101 recall points 0, 0.01, ..., 1 (0 beyond
the highest recall reached). AP is the mean of those 101 values.

Inputs are per-image IoU matrices (see `neuron_matching.mask_iou_matrix`), so the
matrices computed for neuron matching are reused.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def greedy_true_positives(iou: np.ndarray, iou_threshold: float) -> np.ndarray:
  """[Nd, Nt] IoU with detections in descending score order -> [Nd] bool, matched."""
  threshold = min(iou_threshold, 1 - 1e-10)
  taken = np.zeros(iou.shape[1], bool)
  hits = np.zeros(iou.shape[0], bool)
  for d in range(iou.shape[0]):
    available = np.where(taken, -1.0, iou[d])
    if available.size and available.max() >= threshold:
      taken[np.argmax(available)] = True
      hits[d] = True
  return hits


def interpolated_precision(hits: np.ndarray, scores: np.ndarray, num_true: int) -> np.ndarray:
  """Ranked detections of a whole set -> [101] precision at RECALL_POINTS."""
  order = np.argsort(-scores, kind="mergesort")
  true_pos = np.cumsum(hits[order])
  false_pos = np.cumsum(~hits[order])
  recall = true_pos / num_true
  precision = true_pos / np.maximum(true_pos + false_pos, np.finfo(np.float64).eps)
  precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
  index = np.searchsorted(recall, RECALL_POINTS, side="left")
  reached = index < len(precision)
  return np.where(reached, precision[np.minimum(index, len(precision) - 1)], 0.0)


def mask_average_precision(ious: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                           iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
                           max_detections: int = 500) -> np.ndarray:
  """AP at each IoU threshold over a set of images.

  Args:
    ious: per image, [Nd_i, Nt_i] mask IoU of detections against true masks.
    scores: per image, [Nd_i] detection confidences.
    iou_thresholds: [T] thresholds.
    max_detections: highest-scoring detections kept per image (COCO uses 100;
      two-photon fields hold several hundred neurons).
  Returns:
    [T] AP; NaN when the set holds no true mask.
  """
  ranked_ious, ranked_scores = [], []
  for iou, score in zip(ious, scores):
    order = np.argsort(-np.asarray(score), kind="mergesort")[:max_detections]
    ranked_ious.append(np.asarray(iou)[order])
    ranked_scores.append(np.asarray(score, np.float64)[order])
  num_true = sum(iou.shape[1] for iou in ranked_ious)
  if num_true == 0:
    return np.full(len(iou_thresholds), np.nan)
  all_scores = np.concatenate(ranked_scores) if ranked_scores else np.zeros(0)
  aps = []
  for threshold in iou_thresholds:
    hits = np.concatenate([greedy_true_positives(iou, threshold) for iou in ranked_ious])
    aps.append(interpolated_precision(hits, all_scores, num_true).mean() if len(hits) else 0.0)
  return np.asarray(aps)


def mask_map(ious: Sequence[np.ndarray], scores: Sequence[np.ndarray],
             max_detections: int = 500) -> dict[str, float]:
  """{"map50": AP at IoU .5, "map50_95": mean AP over IoU .5:.05:.95}."""
  aps = mask_average_precision(ious, scores, COCO_IOU_THRESHOLDS, max_detections)
  return {"map50": float(aps[0]), "map50_95": float(aps.mean())}
