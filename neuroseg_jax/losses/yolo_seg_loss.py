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

Everything is static-shape. On the full map, positives are gathered into
P = min(topk * M, A) slots per image (an exact bound: every positive anchor was
among the top-k of at least one box) and evaluated on the whole prototype map:
[B, P, Hp, Wp] logits, which dominated the cost of a 512 px step (P = 4,000 slots x
128 x 128 cells per image). A positive's loss only counts inside its box, and all
positives of one instance share its box and mask, so with `mask_window` K > 0 the
term is computed per instance on the K x K crop of the map that holds its box, for
its positives, in `mask_slots` slots: [B, M, mask_slots, K, K] logits. An instance
can hold more than top-k positives (anchors in the top-k of several boxes go to the
box they overlap most, which may not have ranked them; 14 for 120 overlapping
neurons per 512 px image), hence mask_slots > topk. When the crops are not exact
for a batch (a box larger than its crop, or an instance with more positives than
slots), the batch takes the full-map path (`lax.cond`), so the loss is the same
either way; `mask_window=0` always uses it.
"""

from __future__ import annotations

import dataclasses
import functools

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
  mask_window: int = 16  # prototype cells; 0 = evaluate the mask term on the full map
  mask_slots: int = 24   # positives per instance on the crop path (> topk: see module doc)


_SLOT_CHUNK = 500  # positives per piece of the full-map mask term.


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


def _box_mask(boxes: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """[P, 4] xyxy in grid cells, cell indices rows [P, h], cols [P, w] -> [P, h, w] bool,
  cell in [x1, x2) x [y1, y2)."""
  x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
  rows, cols = rows[:, :, None].astype(jnp.float32), cols[:, None, :].astype(jnp.float32)
  return (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)


def _window_origins(boxes: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """[..., 4] xyxy boxes in cells -> [..., 2] int32 (row, col) of the window x window crop
  that starts at the box's first cell (moved inside the map at its far edges)."""
  y0 = jnp.clip(jnp.ceil(jnp.maximum(boxes[..., 1], 0.0)), 0, height - window)
  x0 = jnp.clip(jnp.ceil(jnp.maximum(boxes[..., 0], 0.0)), 0, width - window)
  return jnp.stack([y0, x0], axis=-1).astype(jnp.int32)


def boxes_fit_windows(boxes: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """[..., 4] xyxy boxes in cells -> [...] bool: every cell of the box (on the map) lies in
  its crop of `_window_origins`."""
  origins = _window_origins(boxes, window, height, width)
  last_row = jnp.ceil(jnp.minimum(boxes[..., 3], height)) - origins[..., 0]
  last_col = jnp.ceil(jnp.minimum(boxes[..., 2], width)) - origins[..., 1]
  return (last_row <= window) & (last_col <= window)


def _full_map_mask_loss(foreground, target_index, target_boxes, coefs, protos, gt_masks, *,
                        num_slots):
  """Summed per-positive mask loss of one image, each positive on the whole map.

  foreground [A] bool, target_index [A], target_boxes [A, 4] in prototype cells,
  coefs [A, nm], protos [Hp, Wp, nm], gt_masks [M, Hp, Wp]. The first num_slots
  positives count; their [num_slots, Hp, Wp] logits are made _SLOT_CHUNK slots at a
  time and recomputed in the backward pass, so the branch holds [_SLOT_CHUNK, Hp, Wp]
  tensors, not [num_slots, Hp, Wp] ones (at 512 px, 4,000 slots: 262 MB each, which
  XLA reserved in every step even when the crop branch runs).
  """
  height, width = protos.shape[:2]
  chunks = -(-num_slots // _SLOT_CHUNK)
  slots = jnp.nonzero(foreground, size=chunks * _SLOT_CHUNK, fill_value=0)[0]
  filled = jnp.arange(chunks * _SLOT_CHUNK) < jnp.minimum(foreground.sum(), num_slots)

  @jax.checkpoint
  def chunk_sum(piece):
    slots, filled = piece
    logits = jnp.einsum("pn,hwn->phw", coefs[slots], protos)
    boxes = target_boxes[slots]
    inside = _box_mask(boxes, jnp.broadcast_to(jnp.arange(height), (len(slots), height)),
                       jnp.broadcast_to(jnp.arange(width), (len(slots), width)))
    targets = gt_masks[target_index[slots]].astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    area = box_geometry.box_area(boxes)
    per_positive = (jnp.where(inside, bce, 0.0).sum(axis=(1, 2))
                    / jnp.where(filled & (area > 0), area, 1.0))
    return jnp.where(filled, per_positive, 0.0).sum()

  pieces = (slots.reshape(chunks, _SLOT_CHUNK), filled.reshape(chunks, _SLOT_CHUNK))
  return jax.lax.map(chunk_sum, pieces).sum()


def _positives_by_instance(foreground, target_index, num_instances: int, per_instance: int):
  """[A] positives -> ([M, per_instance] anchor indices of each instance's positives,
  [M, per_instance] bool filled)."""
  owned = foreground[None, :] & (target_index[None, :] == jnp.arange(num_instances)[:, None])
  filled, anchors = jax.lax.top_k(owned.astype(jnp.float32), per_instance)
  return anchors, filled > 0


def _cropped_mask_loss(foreground, target_index, gt_boxes, coefs, protos, gt_masks, *,
                       per_instance, window):
  """The same sum as `_full_map_mask_loss`, computed per instance on the window x window
  crop that holds its box ([M, per_instance, K, K] logits). Exact when every instance
  with positives has at most `per_instance` of them and its box fits its crop
  (`cropped_mask_loss_is_exact`). gt_boxes [M, 4] in prototype cells."""
  height, width, channels = protos.shape
  anchors, filled = _positives_by_instance(foreground, target_index, gt_masks.shape[0],
                                           per_instance)
  origins = _window_origins(gt_boxes, window, height, width)  # [M, 2]
  crops = jax.vmap(lambda o: jax.lax.dynamic_slice(protos, (o[0], o[1], 0),
                                                   (window, window, channels)))(origins)
  targets = jax.vmap(lambda mask, o: jax.lax.dynamic_slice(mask, o, (window, window)))(
      gt_masks, origins)
  logits = jnp.einsum("mkn,mhwn->mkhw", coefs[anchors], crops)
  inside = _box_mask(gt_boxes, origins[:, :1] + jnp.arange(window)[None],
                     origins[:, 1:] + jnp.arange(window)[None])
  bce = optax.sigmoid_binary_cross_entropy(logits, targets[:, None].astype(jnp.float32))
  area = box_geometry.box_area(gt_boxes)
  per_positive = (jnp.where(inside[:, None], bce, 0.0).sum(axis=(2, 3))
                  / jnp.where(area > 0, area, 1.0)[:, None])
  return jnp.where(filled, per_positive, 0.0).sum()


def cropped_mask_loss_is_exact(foreground, target_index, gt_boxes, *, per_instance: int,
                               window: int, height: int, width: int) -> jax.Array:
  """Scalar bool for a batch ([B, A] positives, [B, M, 4] boxes in cells): every instance
  with positives has at most `per_instance` and its box fits its crop."""
  counts = jax.vmap(lambda f, t: jnp.zeros(gt_boxes.shape[1], jnp.int32).at[t].add(f))(
      foreground.astype(jnp.int32), target_index)
  fits = boxes_fit_windows(gt_boxes, window, height, width)
  return ((counts == 0) | (fits & (counts <= per_instance))).all()


def _one_image_at_a_time(per_image, *batched):
  """[B] results of per_image(*image_args) over the batch axis of `batched`, one image
  at a time and recomputed in the backward pass, so a batch's per-image tensors are
  never held at once."""
  per_image = jax.checkpoint(per_image)
  return jax.lax.map(lambda args: per_image(*args), batched)


def _mask_loss_sums(foreground, target_index, gt_boxes, coefs, protos, gt_masks, *,
                    num_slots, per_instance, window):
  """[B] summed mask losses; on crops when that is exact for the batch, else on the map.

  Both run one image at a time: the map's [num_slots, Hp, Wp] logits of a batch are
  ~2 GB at 512 px, batch 8, and the crops' [B, M, ...] tensors (M = max_instances
  slots) were the largest of the training step."""
  height, width = protos.shape[1:3]
  target_boxes = jax.vmap(lambda boxes, index: boxes[index])(gt_boxes, target_index)
  full = lambda: _one_image_at_a_time(  # noqa: E731
      functools.partial(_full_map_mask_loss, num_slots=num_slots),
      foreground, target_index, target_boxes, coefs, protos, gt_masks)
  if not window or window >= min(height, width):
    return full()
  cropped = lambda: _one_image_at_a_time(  # noqa: E731
      functools.partial(_cropped_mask_loss, per_instance=per_instance, window=window),
      foreground, target_index, gt_boxes, coefs, protos, gt_masks)
  exact = cropped_mask_loss_is_exact(foreground, target_index, gt_boxes,
                                     per_instance=per_instance, window=window, height=height,
                                     width=width)
  return jax.lax.cond(exact, cropped, full)


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
  mask_sums = _mask_loss_sums(
      foreground, assignment.target_index, batch["boxes"].astype(jnp.float32) * proto_scale,
      outputs["mask_coef"].astype(jnp.float32), protos, batch["masks"], num_slots=num_slots,
      per_instance=hyper.mask_slots, window=hyper.mask_window)
  num_positives = foreground.sum()
  mask_loss = mask_sums.sum() / jnp.maximum(num_positives, 1)

  metrics = {"box": hyper.box_gain * box_loss, "cls": hyper.cls_gain * cls_loss,
             "dfl": hyper.dfl_gain * dfl_loss, "mask": hyper.box_gain * mask_loss}
  total = sum(metrics.values())
  metrics["num_positives"] = num_positives.astype(jnp.float32)
  return total, metrics
