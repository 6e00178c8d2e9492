"""YOLOv8 segment-head outputs -> boxes in input pixels and class probabilities (jit-able).

Head output contract (every YOLO-style model in `neuroseg_jax.models` returns it):
  {"box_logits": [B, A, 4 * reg_max]  side-major (channel = side * reg_max + bin),
                                       sides ordered left, top, right, bottom;
   "cls_logits": [B, A, nc]            pre-sigmoid;
   "mask_coef":  [B, A, nm]            raw;
   "protos":     [B, H / 4, W / 4, nm] mask prototypes at stride 4.}
Anchors A are the cells of the stride-8, -16 and -32 maps of a [B, H, W, C]
input, each flattened row-major and concatenated in that order
(`box_geometry.make_anchors`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from neuroseg_jax.models import box_geometry


def decode_predictions(outputs: dict, image_hw: tuple[int, int]) -> dict:
  """Head outputs -> boxes in input pixels, class probabilities, mask coefficients.

  Returns {"boxes_xyxy": [B, A, 4], "boxes_xywh": [B, A, 4] (pixels),
           "scores": [B, A, nc] (sigmoid), "mask_coef": [B, A, nm],
           "protos": [B, H / 4, W / 4, nm]}.
  """
  points, anchor_strides = box_geometry.make_anchors(image_hw)
  ltrb = box_geometry.dfl_expectation(outputs["box_logits"])
  boxes = box_geometry.distances_to_xyxy(ltrb, jnp.asarray(points)) * jnp.asarray(anchor_strides)
  return {
      "boxes_xyxy": boxes,
      "boxes_xywh": box_geometry.xyxy_to_xywh(boxes),
      "scores": jax.nn.sigmoid(outputs["cls_logits"].astype(jnp.float32)),
      "mask_coef": outputs["mask_coef"],
      "protos": outputs["protos"],
  }
