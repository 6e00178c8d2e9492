"""Task-aligned assigner (TOOD, Feng et al. 2021) as used by the YOLOv8 losses.

For every ground-truth box the anchors whose centres lie strictly inside it are
candidates; each candidate gets the alignment metric score^alpha * CIoU^beta
(score = predicted probability of the box's class, CIoU clamped at 0, as in
ultralytics); the top-k candidates per box become positives. An anchor positive for
several boxes keeps only the box it overlaps most. Positive anchors get a soft
class target: their metric divided by (the best metric of their box + eps), times
the best CIoU of that box (eps matters for tiny objects, see
`yolo_seg_loss.SegLossHyper.assigner_eps`).

Static shapes throughout ([B, M, A] masks, M = padded instance count), so the
assigner compiles once. Gradients never flow through it.

Deliberate difference from ultralytics: an anchor positive for several boxes is
resolved by the arg-max CIoU among its *candidate* boxes only, so it can never be
handed to a padding box (ultralytics takes the arg-max over all boxes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from neuroseg_jax.models import box_geometry


class Assignment(NamedTuple):
  """Per-anchor training targets (B images, A anchors, nc classes).

  target_boxes: [B, A, 4] xyxy of the assigned box (same unit as the inputs).
  target_scores: [B, A, nc] soft class targets, 0 for background anchors.
  foreground: [B, A] bool, anchor is positive.
  target_index: [B, A] int32 index of the assigned box in [0, M).
  """
  target_boxes: jax.Array
  target_scores: jax.Array
  foreground: jax.Array
  target_index: jax.Array


def anchors_inside_boxes(points: jax.Array, boxes: jax.Array, eps: float = 1e-9) -> jax.Array:
  """[A, 2] anchor centres, [M, 4] boxes -> [M, A] bool, centre strictly inside the box."""
  return box_geometry.xyxy_to_ltrb(points[None], boxes[:, None]).min(axis=-1) > eps


def _assign_image(scores, pred_boxes, points, gt_classes, gt_boxes, gt_valid, *, topk, alpha,
                  beta, eps):
  """One image: scores [A, nc], pred_boxes [A, 4], points [A, 2], gt_* [M, ...]."""
  num_gts, num_anchors = gt_boxes.shape[0], points.shape[0]
  num_classes = scores.shape[-1]
  classes = jnp.clip(gt_classes, 0, num_classes - 1)
  candidates = anchors_inside_boxes(points, gt_boxes) & gt_valid[:, None]  # [M, A]

  class_scores = scores[:, classes].T  # [M, A]
  overlaps = jnp.clip(box_geometry.complete_iou(gt_boxes[:, None], pred_boxes[None]), 0)
  overlaps = jnp.where(candidates, overlaps, 0.0)
  align = jnp.where(candidates, class_scores**alpha * overlaps**beta, 0.0)

  _, top_index = jax.lax.top_k(align, min(topk, num_anchors))  # [M, k]
  in_topk = jnp.zeros((num_gts, num_anchors), bool).at[
      jnp.arange(num_gts)[:, None], top_index].set(True)
  positive = in_topk & candidates

  claimed_by_several = positive.sum(axis=0) > 1  # [A]
  best_gt = jnp.argmax(jnp.where(candidates, overlaps, -1.0), axis=0)  # [A]
  best_gt_onehot = jnp.arange(num_gts)[:, None] == best_gt[None, :]
  positive = jnp.where(claimed_by_several[None, :], best_gt_onehot, positive)

  foreground = positive.any(axis=0)
  target_index = jnp.argmax(positive, axis=0).astype(jnp.int32)
  align = jnp.where(positive, align, 0.0)
  best_align = align.max(axis=1, keepdims=True)  # [M, 1]
  best_overlap = jnp.where(positive, overlaps, 0.0).max(axis=1, keepdims=True)
  normalized = (align * best_overlap / (best_align + eps)).max(axis=0)  # [A]
  target_scores = jax.nn.one_hot(classes[target_index], num_classes) * normalized[:, None]
  return Assignment(
      target_boxes=gt_boxes[target_index],
      target_scores=jnp.where(foreground[:, None], target_scores, 0.0),
      foreground=foreground,
      target_index=target_index)


def assign_targets(pred_scores: jax.Array, pred_boxes: jax.Array, anchor_points: jax.Array,
                   gt_classes: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *,
                   topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                   eps: float = 1e-9) -> Assignment:
  """Task-aligned assignment of anchors to ground-truth boxes (jit-able, no gradients).

  Args:
    pred_scores: [B, A, nc] predicted class probabilities (after sigmoid).
    pred_boxes: [B, A, 4] predicted xyxy boxes, same unit as gt_boxes.
    anchor_points: [A, 2] anchor centres (x, y), same unit as gt_boxes.
    gt_classes: [B, M] int class of each box (any value for padding).
    gt_boxes: [B, M, 4] xyxy boxes.
    gt_valid: [B, M] bool, False for padding entries.
    topk, alpha, beta, eps: TAL hyper-parameters (ultralytics defaults); eps
      guards the soft-target normalisation.
  Returns:
    Assignment with [B, A, ...] fields.
  """
  inputs = jax.lax.stop_gradient(
      (pred_scores.astype(jnp.float32), pred_boxes.astype(jnp.float32),
       gt_boxes.astype(jnp.float32)))
  scores, boxes, gts = inputs
  points = jnp.asarray(anchor_points, jnp.float32)
  assign = jax.vmap(lambda s, p, c, g, v: _assign_image(
      s, p, points, c, g, v, topk=topk, alpha=alpha, beta=beta, eps=eps))
  return assign(scores, boxes, gt_classes.astype(jnp.int32), gts, gt_valid.astype(bool))
