"""The YOLOv8-seg loss as ultralytics 8.0.202 computes it, in PyTorch, for the timing replica.

Same terms and gains as `neuroseg_jax/losses/yolo_seg_loss.py` (box CIoU, DFL, class
BCE, box-cropped mask BCE; the task-aligned assigner with top-k 10, alpha 0.5,
beta 6), with ultralytics' layout of the work, which is what the timing is about:
  * instance slots are trimmed to the most instances of any image in the batch;
  * the assigner scores CIoU only for anchors inside a box (boolean indexing);
  * the mask term runs image by image over that image's positives only, each on the
    whole prototype map (then summed over all positives of the batch and divided by
    their number, as the project's loss does);
  * the total is multiplied by the batch size, as ultralytics returns it.
Shapes: raw outputs [B, 65, h, w] per level, coefficients [B, 32, A], prototypes
[B, 32, Hp, Wp]; targets boxes [B, M, 4] xyxy input pixels, classes [B, M], valid
[B, M] bool, masks [B, M, Hp, Wp] at prototype resolution.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from experiments.torch_replica.network import REG_MAX, make_anchors

BOX_GAIN, CLS_GAIN, DFL_GAIN = 7.5, 0.5, 1.5
TOPK, ALPHA, BETA, EPS = 10, 0.5, 6.0, 1e-9


def complete_iou(a, b, eps: float = 1e-7):
  """CIoU of xyxy boxes a, b [..., 4] -> [...]."""
  w1, h1 = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1] + eps
  w2, h2 = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1] + eps
  inter = ((torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(0) *
           (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(0))
  iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
  cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
  ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
  diagonal = cw ** 2 + ch ** 2 + eps
  centre = ((b[..., 0] + b[..., 2] - a[..., 0] - a[..., 2]) ** 2 +
            (b[..., 1] + b[..., 3] - a[..., 1] - a[..., 3]) ** 2) / 4
  v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
  with torch.no_grad():
    alpha = v / (v - iou + (1 + eps))
  return iou - (centre / diagonal + v * alpha)


def assign(scores, boxes, points, gt_classes, gt_boxes, gt_valid):
  """Task-aligned assignment. scores [B, A, nc] probabilities, boxes [B, A, 4] and
  gt_boxes [B, M, 4] xyxy pixels, points [A, 2] pixels, gt_classes [B, M] long,
  gt_valid [B, M] bool -> (target boxes [B, A, 4], target scores [B, A, nc],
  foreground [B, A] bool, target index [B, A])."""
  batch, anchors, classes = scores.shape
  slots = gt_boxes.shape[1]
  deltas = torch.cat([points[None, None] - gt_boxes[:, :, None, :2],
                      gt_boxes[:, :, None, 2:] - points[None, None]], dim=-1)
  candidates = (deltas.amin(-1) > EPS) & gt_valid[:, :, None]  # [B, M, A]
  overlaps = torch.zeros(batch, slots, anchors, dtype=boxes.dtype)
  box_scores = torch.zeros_like(overlaps)
  class_scores = scores.gather(2, gt_classes[:, None, :].expand(-1, anchors, -1)).transpose(1, 2)
  box_scores[candidates] = class_scores[candidates]
  pairs_gt = gt_boxes[:, :, None].expand(-1, -1, anchors, -1)[candidates]
  pairs_pred = boxes[:, None].expand(-1, slots, -1, -1)[candidates]
  overlaps[candidates] = complete_iou(pairs_gt, pairs_pred).clamp(0)
  metric = box_scores.pow(ALPHA) * overlaps.pow(BETA)
  top = metric.topk(TOPK, dim=-1).indices.masked_fill(~gt_valid[..., None], 0)
  counts = torch.zeros_like(metric, dtype=torch.int8).scatter_add_(
      -1, top, torch.ones_like(top, dtype=torch.int8))
  positive = ((counts == 1) & candidates).float()  # [B, M, A]
  per_anchor = positive.sum(1)
  if per_anchor.max() > 1:  # an anchor in several boxes' top-k goes to the best overlap
    best = torch.zeros_like(positive).scatter_(1, overlaps.argmax(1, keepdim=True), 1.0)
    positive = torch.where(per_anchor[:, None] > 1, best, positive)
    per_anchor = positive.sum(1)
  foreground = per_anchor > 0
  target_index = positive.argmax(1)  # [B, A]
  target_boxes = gt_boxes.gather(1, target_index[..., None].expand(-1, -1, 4))
  target_classes = gt_classes.gather(1, target_index)
  target_scores = F.one_hot(target_classes, classes).float() * foreground[..., None]
  metric = metric * positive
  normalised = (metric * (overlaps * positive).amax(-1, keepdim=True) /
                (metric.amax(-1, keepdim=True) + EPS)).amax(1)  # [B, A]
  return target_boxes, target_scores * normalised[..., None], foreground, target_index


def distribution_focal(logits, target):
  """logits [P, 4, 16], target distances [P, 4] in bins -> [P] mean over the sides."""
  target = target.clamp(0, REG_MAX - 1 - 0.01)
  left = target.long()
  right_weight = target - left
  log_probs = logits.log_softmax(-1)
  return -(log_probs.gather(-1, left[..., None])[..., 0] * (1 - right_weight) +
           log_probs.gather(-1, left[..., None] + 1)[..., 0] * right_weight).mean(-1)


def seg_loss(raw, coefs, protos, gt_boxes, gt_classes, gt_valid, gt_masks):
  """(total * batch size, [box, mask, cls, dfl] gain-weighted terms) of one batch."""
  batch, _, proto_h, proto_w = protos.shape
  slots = max(int(gt_valid.sum(1).max()), 1)  # ultralytics pads to the batch's most
  gt_boxes, gt_classes = gt_boxes[:, :slots], gt_classes[:, :slots].long()
  gt_valid, gt_masks = gt_valid[:, :slots], gt_masks[:, :slots]
  flat = torch.cat([r.view(batch, r.shape[1], -1) for r in raw], dim=2).transpose(1, 2)
  box_logits, cls_logits = flat[..., :4 * REG_MAX], flat[..., 4 * REG_MAX:]
  coefs = coefs.transpose(1, 2)  # [B, A, 32]
  points, strides = make_anchors(raw)
  image_h, image_w = raw[0].shape[2] * 8, raw[0].shape[3] * 8
  distances = (box_logits.view(batch, -1, 4, REG_MAX).softmax(-1) @
               torch.arange(REG_MAX, dtype=flat.dtype))
  pred_boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], -1)
  target_boxes, target_scores, foreground, target_index = assign(
      cls_logits.detach().sigmoid(), pred_boxes.detach() * strides, points * strides,
      gt_classes, gt_boxes, gt_valid)
  score_sum = max(target_scores.sum(), 1)
  loss = torch.zeros(4)
  loss[2] = F.binary_cross_entropy_with_logits(cls_logits, target_scores,
                                               reduction="none").sum() / score_sum
  if foreground.any():
    weight = target_scores.sum(-1)[foreground]
    target_cells = target_boxes / strides
    loss[0] = ((1 - complete_iou(pred_boxes[foreground], target_cells[foreground])) *
               weight).sum() / score_sum
    ltrb = torch.cat([points - target_cells[..., :2], target_cells[..., 2:] - points], -1)
    loss[3] = (distribution_focal(box_logits[foreground].view(-1, 4, REG_MAX),
                                  ltrb[foreground]) * weight).sum() / score_sum
    scale = torch.tensor([proto_w / image_w, proto_h / image_h] * 2)
    rows = torch.arange(proto_h, dtype=flat.dtype)[None, :, None]
    cols = torch.arange(proto_w, dtype=flat.dtype)[None, None, :]
    for i in range(batch):
      chosen = foreground[i]
      if not chosen.any():
        continue
      cells = target_boxes[i][chosen] * scale  # [P, 4] in prototype cells
      logits = (coefs[i][chosen] @ protos[i].view(protos.shape[1], -1)).view(-1, proto_h,
                                                                             proto_w)
      targets = gt_masks[i][target_index[i][chosen]].float()
      bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
      x1, y1, x2, y2 = (cells[:, k, None, None] for k in range(4))
      inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
      area = (x2 - x1) * (y2 - y1)
      loss[1] += ((bce * inside).sum((1, 2)) / area[:, 0, 0]).sum()
    loss[1] /= foreground.sum()
  loss *= torch.tensor([BOX_GAIN, BOX_GAIN, CLS_GAIN, DFL_GAIN])
  return loss.sum() * batch, loss.detach()
