"""Box geometry of the YOLO head: anchors, DFL distances, box formats, IoU and CIoU.

The segment head, the loss, the assigner and post-processing must agree on the
anchor grid (`STRIDES`), the DFL bins (`REG_MAX`) and how distances become boxes,
so all of it lives here, once. The module holds no Flax module: losses/ reach
models/ only through it (STYLE.md), and evaluation/ uses the same IoU for NMS.

Boxes are [..., 4] (x1, y1, x2, y2) corners and distances [..., 4] (l, t, r, b)
from [..., 2] (x, y) points, in any consistent unit (input pixels or grid cells
of one level). Everything is jnp and jit-able; `box_area` and `pairwise_box_iou`
also run on NumPy arrays, so host-side NMS does not round-trip through the device.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

STRIDES = (8, 16, 32)  # anchor levels P3, P4, P5
REG_MAX = 16  # DFL bins per box side
CIOU_EPS = 1e-7  # ultralytics `bbox_iou` eps


def level_shapes(image_hw: tuple[int, int], strides: Sequence[int] = STRIDES):
  """Feature-map sizes [(h, w), ...] of each level for an input of size image_hw."""
  height, width = image_hw
  return [(-(-height // s), -(-width // s)) for s in strides]


def make_anchors(image_hw: tuple[int, int], strides: Sequence[int] = STRIDES):
  """Anchor centres and their strides, levels in `strides` order, each row-major.

  Returns:
    points: [A, 2] float32 (x, y) = (col + 0.5, row + 0.5) in grid units of
      the anchor's own level.
    anchor_strides: [A, 1] float32, the stride of each anchor's level.
  """
  points, anchor_strides = [], []
  for (h, w), stride in zip(level_shapes(image_hw, strides), strides):
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    points.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
    anchor_strides.append(np.full((h * w, 1), stride))
  return (np.concatenate(points).astype(np.float32),
          np.concatenate(anchor_strides).astype(np.float32))


def dfl_expectation(box_logits: jax.Array, reg_max: int = REG_MAX) -> jax.Array:
  """[..., 4 * reg_max] side-major bin logits -> [..., 4] expected (l, t, r, b) in bins."""
  bins = box_logits.reshape(*box_logits.shape[:-1], 4, reg_max)
  probs = jax.nn.softmax(bins.astype(jnp.float32), axis=-1)
  return probs @ jnp.arange(reg_max, dtype=jnp.float32)


def distances_to_xyxy(ltrb: jax.Array, points: jax.Array) -> jax.Array:
  """[..., 4] (l, t, r, b) distances around [..., 2] points -> [..., 4] corners."""
  return jnp.concatenate([points - ltrb[..., :2], points + ltrb[..., 2:]], axis=-1)


def xyxy_to_ltrb(points: jax.Array, boxes: jax.Array) -> jax.Array:
  """Distances from [..., 2] points to the sides of [..., 4] boxes -> [..., 4] (l, t, r, b).

  Inverse of `distances_to_xyxy` (ultralytics `bbox2dist`, unclipped); all four
  are positive exactly when the point lies strictly inside the box.
  """
  return jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
  """[..., 4] corners -> [..., 4] (centre x, centre y, width, height)."""
  return jnp.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
                         axis=-1)


def _array_module(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def box_area(boxes):
  """[..., 4] corners -> [...] area (negative extents count as 0)."""
  xp = _array_module(boxes)
  wh = xp.clip(boxes[..., 2:] - boxes[..., :2], 0, None)
  return wh[..., 0] * wh[..., 1]


def pairwise_box_iou(boxes1, boxes2):
  """IoU of every pair: [N, 4], [K, 4] -> [N, K]; 0 where the union is empty.

  NumPy in, NumPy out; jax in, jax out.
  """
  xp = _array_module(boxes1, boxes2)
  a, b = boxes1[:, None, :], boxes2[None, :, :]
  inter_w = xp.clip(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0, None)
  inter_h = xp.clip(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = inter_w * inter_h
  union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0)


def complete_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = CIOU_EPS) -> jax.Array:
  """Complete IoU (Zheng et al. 2020) as defined by ultralytics `bbox_iou(CIoU=True)`.

  CIoU = IoU - rho^2 / c^2 - alpha * v, where rho is the centre distance, c the
  diagonal of the smallest enclosing box, v = 4 / pi^2 (atan(w2/h2) - atan(w1/h1))^2
  the aspect-ratio term and alpha = v / (v - IoU + 1) its (non-differentiated)
  trade-off weight. Identical boxes give 1; the value lies in (-1, 1].

  Args:
    boxes1, boxes2: [..., 4] corners, broadcastable against each other.
  Returns:
    [...] float32.
  """
  b1 = boxes1.astype(jnp.float32)
  b2 = boxes2.astype(jnp.float32)
  w1, h1 = b1[..., 2] - b1[..., 0], jnp.maximum(b1[..., 3] - b1[..., 1], eps)
  w2, h2 = b2[..., 2] - b2[..., 0], jnp.maximum(b2[..., 3] - b2[..., 1], eps)
  inter_w = jnp.clip(jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0]), 0)
  inter_h = jnp.clip(jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1]), 0)
  inter = inter_w * inter_h
  iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
  enclose_w = jnp.maximum(b1[..., 2], b2[..., 2]) - jnp.minimum(b1[..., 0], b2[..., 0])
  enclose_h = jnp.maximum(b1[..., 3], b2[..., 3]) - jnp.minimum(b1[..., 1], b2[..., 1])
  diagonal2 = enclose_w**2 + enclose_h**2 + eps
  centre_dist2 = ((b2[..., 0] + b2[..., 2] - b1[..., 0] - b1[..., 2])**2 +
                  (b2[..., 1] + b2[..., 3] - b1[..., 1] - b1[..., 3])**2) / 4
  v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1))**2
  alpha = jax.lax.stop_gradient(v / (v - iou + (1 + eps)))
  return iou - (centre_dist2 / diagonal2 + v * alpha)
