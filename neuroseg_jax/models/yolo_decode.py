"""Anchor grids and DFL box decoding for the YOLOv8 segment head (jit-able).

Head output contract (every YOLO-style model in `neuroseg_jax.models` returns it):
  {"box_logits": [B, A, 4 * reg_max]  side-major (channel = side * reg_max + bin),
                                       sides ordered left, top, right, bottom;
   "cls_logits": [B, A, nc]            pre-sigmoid;
   "mask_coef":  [B, A, nm]            raw;
   "protos":     [B, H / 4, W / 4, nm] mask prototypes at stride 4.}
Anchors A are the cells of the stride-8, -16 and -32 maps of a [B, H, W, C]
input, each flattened row-major and concatenated in that order.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

STRIDES = (8, 16, 32)
REG_MAX = 16


def level_shapes(image_hw: tuple[int, int], strides: Sequence[int] = STRIDES):
  """Feature-map sizes [(h, w), ...] of each level for an input of size image_hw."""
  height, width = image_hw
  return [(-(-height // s), -(-width // s)) for s in strides]


def make_anchors(image_hw: tuple[int, int], strides: Sequence[int] = STRIDES):
  """Anchor centres and their strides.

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
  """[..., 4 * reg_max] logits -> [..., 4] expected (l, t, r, b) distances in bins."""
  bins = box_logits.reshape(*box_logits.shape[:-1], 4, reg_max)
  probs = jax.nn.softmax(bins.astype(jnp.float32), axis=-1)
  return probs @ jnp.arange(reg_max, dtype=jnp.float32)


def distances_to_xyxy(ltrb: jax.Array, points: jax.Array) -> jax.Array:
  """[..., 4] (l, t, r, b) distances around [..., 2] points -> [..., 4] (x1, y1, x2, y2)."""
  return jnp.concatenate([points - ltrb[..., :2], points + ltrb[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
  """[..., 4] corners -> [..., 4] (centre x, centre y, width, height)."""
  return jnp.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
                         axis=-1)


def decode_predictions(outputs: dict, image_hw: tuple[int, int]) -> dict:
  """Head outputs -> boxes in input pixels, class probabilities, mask coefficients.

  Returns {"boxes_xyxy": [B, A, 4], "boxes_xywh": [B, A, 4] (pixels),
           "scores": [B, A, nc] (sigmoid), "mask_coef": [B, A, nm],
           "protos": [B, H / 4, W / 4, nm]}.
  """
  points, anchor_strides = make_anchors(image_hw)
  ltrb = dfl_expectation(outputs["box_logits"])
  boxes = distances_to_xyxy(ltrb, jnp.asarray(points)) * jnp.asarray(anchor_strides)
  return {
      "boxes_xyxy": boxes,
      "boxes_xywh": xyxy_to_xywh(boxes),
      "scores": jax.nn.sigmoid(outputs["cls_logits"].astype(jnp.float32)),
      "mask_coef": outputs["mask_coef"],
      "protos": outputs["protos"],
  }
