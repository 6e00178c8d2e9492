"""Test helpers: hand-built YOLO head outputs that decode to known instances.

`encode_instances` is the inverse of `yolo_decode.decode_predictions` for a few
boxes: each box is predicted by the stride-8 anchor under its centre (DFL logits
put the probability on the two bins around each distance, so the expectation is
exact) and its mask by one prototype channel (+8 inside, -8 outside).
`oracle_predict_fn` builds such outputs from the blobs of each image
(`oracle_batch_predict_fn`: the same behind the engine's {"image": ...} batches).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neuroseg_jax.models import box_geometry

BACKGROUND_LOGIT = -20.0


def dfl_logits_for(distances: np.ndarray, reg_max: int = 16) -> np.ndarray:
  """[..., 4] distances in bins -> [..., 4 * reg_max] logits whose expectation is exact."""
  distances = np.asarray(distances, np.float64)
  left = np.floor(distances).astype(int)
  frac = distances - left
  probs = np.zeros(distances.shape + (reg_max,))
  np.put_along_axis(probs, left[..., None], (1 - frac)[..., None], axis=-1)
  right = np.minimum(left + 1, reg_max - 1)
  np.put_along_axis(probs, right[..., None],
                    np.take_along_axis(probs, right[..., None], -1) + frac[..., None], axis=-1)
  return np.log(np.maximum(probs, 1e-30)).reshape(*distances.shape[:-1], -1).astype(np.float32)


def encode_instances(boxes, proto_masks, image_size: int, scores=None, num_protos: int = 32):
  """Head outputs (batch of 1, numpy) predicting the given instances.

  Args:
    boxes: [N, 4] xyxy in input pixels.
    proto_masks: [N, S/4, S/4] bool masks at prototype resolution.
    image_size: S.
    scores: [N] confidences (default 0.9).
  Returns:
    dict per the head-output contract, B = 1.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  num = len(boxes)
  assert num <= num_protos
  scores = np.full(num, 0.9) if scores is None else np.asarray(scores, np.float64)
  points, strides = box_geometry.make_anchors((image_size, image_size))
  num_anchors = len(points)
  box_logits = np.zeros((num_anchors, 64), np.float32)
  cls_logits = np.full((num_anchors, 1), BACKGROUND_LOGIT, np.float32)
  coefs = np.zeros((num_anchors, num_protos), np.float32)
  cells = image_size // 8
  used = set()
  for i, (box, score) in enumerate(zip(boxes, scores)):
    centre = (box[:2] + box[2:]) / 2
    col, row = (np.floor(centre / 8).astype(int))
    anchor = row * cells + col
    assert anchor not in used, "two instances share an anchor"
    used.add(anchor)
    point = points[anchor] * 8
    ltrb = np.concatenate([point - box[:2], box[2:] - point]) / 8
    assert ltrb.min() >= 0 and ltrb.max() < 15
    box_logits[anchor] = dfl_logits_for(ltrb)
    cls_logits[anchor, 0] = np.log(score / (1 - score))
    coefs[anchor, i] = 1.0
  protos = np.full((image_size // 4, image_size // 4, num_protos), -8.0, np.float32)
  for i, mask in enumerate(np.asarray(proto_masks, bool)):
    protos[..., i] = np.where(mask, 8.0, -8.0)
  return {"box_logits": box_logits[None], "cls_logits": cls_logits[None],
          "mask_coef": coefs[None], "protos": protos[None]}


def blob_instances(image: np.ndarray):
  """Blobs of an [S, S, C] image (channel 0 > 0.05) -> boxes [N, 4], proto masks, scores.

  A blob's score is its brightest value, clipped to [0.01, 0.99].
  """
  plane = image[..., 0]
  labels, num = ndimage.label(plane > 0.05)
  size = image.shape[0]
  boxes, masks, scores = [], [], []
  for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
    boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    full = labels == index
    masks.append(full.reshape(size // 4, 4, size // 4, 4).mean(axis=(1, 3)) >= 0.5)
    scores.append(np.clip(plane[full].max(), 0.01, 0.99))
  return (np.asarray(boxes, np.float64).reshape(num, 4),
          np.asarray(masks).reshape(num, size // 4, size // 4), np.asarray(scores))


def oracle_predict_fn(images: np.ndarray) -> dict:
  """[B, S, S, C] images -> head outputs that detect every blob (see blob_instances)."""
  per_image = []
  for image in images:
    boxes, masks, scores = blob_instances(image)
    per_image.append(encode_instances(boxes, masks, image.shape[0], scores))
  return {key: np.concatenate([o[key] for o in per_image]) for key in per_image[0]}


def oracle_batch_predict_fn(batch: dict) -> dict:
  """The engine's predict_fn convention: {"image": [B, S, S, C]} -> head outputs."""
  return oracle_predict_fn(batch["image"])
