"""Test-time augmentation by flips for YOLO-style segment heads (host NumPy).

`with_flips(predict)` runs a predict function on the batch and on its left-right,
up-down and both-ways flips, maps every pass back to the unflipped anchor grid
and merges the passes into one set of head outputs of the same contract
(`models/yolo_decode.py`), so decoding and post-processing run unchanged:

- anchors: each level's [h, w] grid is flipped back, so anchor a of every pass
  looks at the same place; a left-right flip also swaps the left and right box
  sides (up-down: top and bottom);
- boxes: the DFL bin distributions are averaged (returned as log-probabilities),
  so the decoded distance is the mean of the passes' distances;
- classes: probabilities are averaged (returned as logits);
- masks: the passes' coefficients (divided by the pass count) and their
  flipped-back prototypes are concatenated along the prototype axis, so
  coefficients . prototypes is the mean of the passes' mask logits exactly
  (outputs carry 4x as many prototypes).

The exact anchor correspondence needs input sides that are multiples of the
largest stride (32), as every network input here is.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from neuroseg_jax.models import box_geometry

# (flip rows, flip columns) of each pass; the first is the batch as given.
FLIPS = ((False, False), (False, True), (True, False), (True, True))
SIDES = 4  # box sides, ordered left, top, right, bottom


def _flip_image_batch(images: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
  """[B, H, W, C] -> the same batch flipped along the chosen axes."""
  axes = tuple(axis for axis, flip in ((1, rows), (2, cols)) if flip)
  return np.flip(images, axes) if axes else images


def anchor_permutation(image_hw: tuple[int, int], rows: bool, cols: bool) -> np.ndarray:
  """[A] int: anchor a of an unflipped input sits where anchor perm[a] of the flipped
  input sits (levels in `box_geometry.STRIDES` order, each row-major)."""
  pieces, offset = [], 0
  for height, width in box_geometry.level_shapes(image_hw):
    index = np.arange(height * width).reshape(height, width)
    pieces.append(_flip_image_batch(index[None, ..., None], rows, cols)[0, ..., 0].ravel()
                  + offset)
    offset += height * width
  return np.concatenate(pieces)


def _side_order(rows: bool, cols: bool) -> np.ndarray:
  """Box side indices of a flipped pass, in unflipped (l, t, r, b) order."""
  order = np.arange(SIDES)
  if cols:
    order = order[[2, 1, 0, 3]]
  if rows:
    order = order[[0, 3, 2, 1]]
  return order


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def unflip_outputs(outputs: dict, image_hw: tuple[int, int], rows: bool, cols: bool) -> dict:
  """Head outputs of a flipped [B, H, W, C] input -> outputs on the unflipped anchor grid.

  Returns {"box_probs": [B, A, 4, reg_max] (DFL probabilities, sides l, t, r, b),
  "cls_probs": [B, A, nc], "mask_coef": [B, A, nm], "protos": [B, H / 4, W / 4, nm]}.
  """
  perm = anchor_permutation(image_hw, rows, cols)
  box_logits = np.asarray(outputs["box_logits"], np.float32)[:, perm]
  batch, anchors = box_logits.shape[:2]
  box_probs = _softmax(box_logits.reshape(batch, anchors, SIDES, -1))[:, :, _side_order(rows, cols)]
  cls_logits = np.asarray(outputs["cls_logits"], np.float32)[:, perm]
  return {"box_probs": box_probs, "cls_probs": 1.0 / (1.0 + np.exp(-cls_logits)),
          "mask_coef": np.asarray(outputs["mask_coef"], np.float32)[:, perm],
          "protos": _flip_image_batch(np.asarray(outputs["protos"], np.float32), rows, cols)}


def merge_passes(passes: list[dict]) -> dict:
  """`unflip_outputs` of several passes -> one set of head outputs (module docstring)."""
  count = len(passes)
  box_probs = np.mean([p["box_probs"] for p in passes], axis=0)
  batch, anchors = box_probs.shape[:2]
  cls_probs = np.clip(np.mean([p["cls_probs"] for p in passes], axis=0), 1e-7, 1 - 1e-7)
  return {"box_logits": np.log(np.maximum(box_probs, 1e-12)).reshape(batch, anchors, -1),
          "cls_logits": np.log(cls_probs) - np.log1p(-cls_probs),
          "mask_coef": np.concatenate([p["mask_coef"] / count for p in passes], axis=-1),
          "protos": np.concatenate([p["protos"] for p in passes], axis=-1)}


def with_flips(predict: Callable[[dict], dict]) -> Callable[[dict], dict]:
  """predict({"image": [B, H, W, C], ...}) -> head outputs, wrapped to average the
  four flips of the batch (module docstring); H and W must be multiples of 32."""

  def predict_with_flips(batch: dict) -> dict:
    images = np.asarray(batch["image"])
    image_hw = images.shape[1:3]
    passes = []
    for rows, cols in FLIPS:
      flipped = {**batch, "image": np.ascontiguousarray(_flip_image_batch(images, rows, cols))}
      passes.append(unflip_outputs(predict(flipped), image_hw, rows, cols))
    return merge_passes(passes)

  return predict_with_flips
