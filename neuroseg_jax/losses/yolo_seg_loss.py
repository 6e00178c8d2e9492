"""YOLOv8 instance-segmentation loss (ultralytics `v8SegmentationLoss`) in JAX.

Terms, each normalised as ultralytics does:
  box:  sum over positive anchors of (1 - CIoU) * w / S, with w = the anchor's soft
        class target summed over classes and S = max(sum of all soft targets, 1);
  dfl:  distribution focal loss of the (l, t, r, b) distances, same weights and S;
  cls:  binary cross-entropy with logits over all anchors and classes / S;
  mask: per positive anchor, BCE of its mask logits (coefficients . prototypes)
        against the assigned instance mask, summed inside the assigned box (at
        prototype resolution) and divided by the box area; averaged over positives.
total = box_gain * box + cls_gain * cls + dfl_gain * dfl + box_gain * mask.

Scale: ultralytics returns total * batch_size. Every term above is already
normalised by a batch-wide sum (S or the number of positives), so we return the
total *without* the batch-size factor: the loss (and its gradient) does not grow with the batch, and learning
rates transfer between batch sizes. Multiply by the batch size to compare numbers
with ultralytics logs.

Everything is static-shape: positives for the mask term are gathered into
P = min(topk * M, A) slots per image (an exact bound: every positive anchor was
among the top-k of at least one box), so no positive is ever dropped. The mask
term materialises [B, P, Hp, Wp] logits (as ultralytics does for its positives):
keep the padded instance count M close to the real maximum.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from neuroseg_jax.errors import DataError
from neuroseg_jax.losses import yolo_assigner
from neuroseg_jax.models import box_geometry


@dataclasses.dataclass(frozen=True)
class SegLossHyper:
  """Gains and assigner settings (ultralytics defaults).

  `assigner_eps` is the guard in the soft-target normalisation
  metric / (best metric of the box + eps). With beta = 6 and objects much smaller
  than the initial predicted boxes (neurons of ~15 px against ~120 px boxes from a
  uniform DFL), metrics start near IoU^6 ~ 1e-12 < eps, which shrinks every soft
  target (and so the box / DFL weights) towards 0; a smaller eps keeps them at
  their intended scale (the best-aligned anchor of each box gets its IoU).
  """
  box_gain: float = 7.5
  cls_gain: float = 0.5
  dfl_gain: float = 1.5
  topk: int = 10
  alpha: float = 0.5
  beta: float = 6.0
  assigner_eps: float = 1e-9


def distribution_focal_loss(box_logits: jax.Array, target_ltrb: jax.Array) -> jax.Array:
  """DFL (Li et al. 2020): cross-entropy to the two bins around each target distance.

  Args:
    box_logits: [..., 4 * reg_max] side-major bin logits.
    target_ltrb: [..., 4] target distances in bins; clipped to [0, reg_max - 1.01].
  Returns:
    [...] loss averaged over the four sides. A target exactly on bin k gives
    -log p_k; a target k + f gives -(1 - f) log p_k - f log p_{k+1}.
  """
  reg_max = box_logits.shape[-1] // 4
  log_probs = jax.nn.log_softmax(
      box_logits.astype(jnp.float32).reshape(*box_logits.shape[:-1], 4, reg_max), axis=-1)
  target = jnp.clip(target_ltrb.astype(jnp.float32), 0, reg_max - 1 - 0.01)
  left = jnp.floor(target).astype(jnp.int32)
  right_weight = target - left
  log_left = jnp.take_along_axis(log_probs, left[..., None], axis=-1)[..., 0]
  log_right = jnp.take_along_axis(log_probs, left[..., None] + 1, axis=-1)[..., 0]
  return -((1 - right_weight) * log_left + right_weight * log_right).mean(axis=-1)


def _box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
  """[P, 4] xyxy in grid cells -> [P, height, width] bool, cell index in [x1, x2) x [y1, y2)."""
  cols = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  rows = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
  return (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)


def _image_mask_loss(foreground, target_index, target_boxes, coefs, protos, gt_masks, *,
                     num_slots):
  """Summed per-positive mask loss of one image.

  foreground [A] bool, target_index [A], target_boxes [A, 4] in prototype cells,
  coefs [A, nm], protos [Hp, Wp, nm], gt_masks [M, Hp, Wp].
  """
  slots = jnp.nonzero(foreground, size=num_slots, fill_value=0)[0]
  filled = jnp.arange(num_slots) < foreground.sum()
  logits = jnp.einsum("pn,hwn->phw", coefs[slots], protos)
  targets = gt_masks[target_index[slots]].astype(jnp.float32)
  boxes = target_boxes[slots]
  inside = _box_mask(boxes, *protos.shape[:2])
  bce_in_box = jnp.where(inside, optax.sigmoid_binary_cross_entropy(logits, targets), 0.0)
  area = box_geometry.box_area(boxes)
  per_positive = bce_in_box.sum(axis=(1, 2)) / jnp.where(filled & (area > 0), area, 1.0)
  return jnp.where(filled, per_positive, 0.0).sum()


def _check_batch(outputs: dict, batch: dict) -> None:
  """Static shape checks (run at trace time) with readable errors."""
  gts = batch["boxes"].shape[1]
  if gts == 0:
    raise DataError("batch['boxes']", "needs at least one (possibly padding) instance slot, "
                    "got shape " + str(batch["boxes"].shape))
  proto_hw = outputs["protos"].shape[1:3]
  if tuple(batch["masks"].shape[2:]) != tuple(proto_hw):
    raise DataError("batch['masks']", f"masks must be at prototype resolution {tuple(proto_hw)}, "
                    f"got shape {batch['masks'].shape}")


def yolo_seg_loss(outputs: dict, batch: dict,
                  hyper: SegLossHyper | None = None) -> tuple[jax.Array, dict]:
  """YOLOv8-seg loss for one batch (pure, jit-able).

  Args:
    outputs: head outputs per `yolo_decode` ("box_logits" [B, A, 4 * reg_max],
      "cls_logits" [B, A, nc], "mask_coef" [B, A, nm], "protos" [B, Hp, Wp, nm]);
      any float dtype, computed in float32.
    batch: {"image": [B, S, S, C], "boxes": [B, M, 4] xyxy input pixels,
      "classes": [B, M] int, "valid": [B, M] bool, "masks": [B, M, Hp, Wp] binary}.
    hyper: gains and assigner settings; defaults to `SegLossHyper()`.
  Returns:
    (total, metrics): total scalar; metrics {"box", "cls", "dfl", "mask"} are the
    gain-weighted terms (they sum to total) plus "num_positives".
  """
  hyper = hyper or SegLossHyper()
  _check_batch(outputs, batch)
  box_logits = outputs["box_logits"].astype(jnp.float32)
  cls_logits = outputs["cls_logits"].astype(jnp.float32)
  image_hw = tuple(batch["image"].shape[1:3])
  points, strides = (jnp.asarray(a) for a in box_geometry.make_anchors(image_hw))
  pred_boxes = box_geometry.distances_to_xyxy(
      box_geometry.dfl_expectation(box_logits, box_logits.shape[-1] // 4), points)  # cells

  assignment = yolo_assigner.assign_targets(
      jax.nn.sigmoid(cls_logits), pred_boxes * strides, points * strides, batch["classes"],
      batch["boxes"], batch["valid"], topk=hyper.topk, alpha=hyper.alpha, beta=hyper.beta,
      eps=hyper.assigner_eps)
  foreground = assignment.foreground
  target_scores_sum = jnp.maximum(assignment.target_scores.sum(), 1.0)
  cls_loss = optax.sigmoid_binary_cross_entropy(
      cls_logits, assignment.target_scores).sum() / target_scores_sum

  weight = jnp.where(foreground, assignment.target_scores.sum(-1), 0.0)
  target_cells = assignment.target_boxes / strides
  # Background anchors compare against their own (constant) prediction so that
  # degenerate padding boxes cannot put NaNs into masked-out gradients.
  safe_targets = jnp.where(foreground[..., None], target_cells,
                           jax.lax.stop_gradient(pred_boxes))
  box_loss = ((1 - box_geometry.complete_iou(pred_boxes, safe_targets)) * weight).sum()
  box_loss = box_loss / target_scores_sum
  target_ltrb = box_geometry.xyxy_to_ltrb(points, safe_targets)
  dfl_loss = (distribution_focal_loss(box_logits, target_ltrb) * weight).sum() / target_scores_sum

  protos = outputs["protos"].astype(jnp.float32)
  proto_scale = jnp.asarray([protos.shape[2] / image_hw[1], protos.shape[1] / image_hw[0]] * 2)
  num_slots = min(hyper.topk * batch["boxes"].shape[1], points.shape[0])
  mask_sums = jax.vmap(lambda *a: _image_mask_loss(*a, num_slots=num_slots))(
      foreground, assignment.target_index, assignment.target_boxes * proto_scale,
      outputs["mask_coef"].astype(jnp.float32), protos, batch["masks"])
  num_positives = foreground.sum()
  mask_loss = mask_sums.sum() / jnp.maximum(num_positives, 1)

  metrics = {"box": hyper.box_gain * box_loss, "cls": hyper.cls_gain * cls_loss,
             "dfl": hyper.dfl_gain * dfl_loss, "mask": hyper.box_gain * mask_loss}
  total = sum(metrics.values())
  metrics["num_positives"] = num_positives.astype(jnp.float32)
  return total, metrics
