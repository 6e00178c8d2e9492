"""YOLOv8-seg head outputs -> instances (masks, scores, boxes) in original-image pixels.

Steps: decode (jit, on device) -> confidence filter -> class-agnostic greedy NMS on
box IoU (host NumPy: the candidate count varies per image, and evaluation needs no
gradient) -> mask logits = coefficients . prototypes, bilinearly resampled straight
into original-image pixels (undoing the letterbox), cropped to the box and
thresholded at logit 0 (probability 0.5) -> optional largest-connected-component
cleanup and removal of instances smaller than `min_area` pixels.

Greedy NMS decides each box from higher-scoring boxes only, so keeping the
instances of a low-threshold run with score >= t gives exactly the result of a run
at threshold t (used by the confidence sweep in `neuron_matching`).

Placement of an original [H, W] image in the input is a
`data.instance_targets.Letterbox` (input = original * scale + pad, pixel edges at
integers) together with (H, W).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np
from scipy import ndimage

from neuroseg_jax.data.instance_targets import Letterbox
from neuroseg_jax.models import box_geometry
from neuroseg_jax.models import yolo_decode

LOW_CONFIDENCE = 0.001  # detections kept before a confidence threshold is chosen
PROTO_STRIDE = 4  # head-output contract: prototypes at 1/4 of the input resolution
IDENTITY = Letterbox(scale=1.0, pad_top=0.0, pad_left=0.0)  # an unpadded input


def boxes_to_original(boxes: np.ndarray, letterbox: Letterbox,
                      original_hw: Sequence[int]) -> np.ndarray:
  """[N, 4] xyxy input pixels -> [N, 4] original pixels, clipped to the image."""
  height, width = original_hw
  return np.clip(letterbox.boxes_to_original(np.asarray(boxes, np.float64)), 0,
                 [width, height, width, height])


@dataclasses.dataclass(frozen=True)
class PostprocessSettings:
  """Thresholds (ultralytics defaults where one exists)."""
  conf_threshold: float = 0.25
  nms_iou: float = 0.7
  max_candidates: int = 3000  # highest-scoring boxes entering NMS
  max_detections: int = 500  # ABO fields hold up to ~350 neurons
  min_area: int = 10  # pixels of the original image
  keep_largest_component: bool = True
  mask_margin: float = 0.0  # original pixels added to each side of a box before its mask is cut


@dataclasses.dataclass
class Instances:
  """Detections of one image (N instances, original image [H, W]).

  masks [N, H, W] bool, scores [N] float32, boxes [N, 4] float32 xyxy original
  pixels, classes [N] int32.
  """
  masks: np.ndarray
  scores: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray

  @classmethod
  def empty(cls, image_hw: tuple[int, int]) -> Instances:
    return cls(np.zeros((0, *image_hw), bool), np.zeros(0, np.float32),
               np.zeros((0, 4), np.float32), np.zeros(0, np.int32))

  def __len__(self) -> int:
    return len(self.scores)

  def select(self, index) -> Instances:
    """Subset by boolean mask or integer indices; `self` (no copy of the masks) when
    the index keeps every instance in its place."""
    index = np.asarray(index)
    everything = np.ones(len(self), bool) if index.dtype == bool else np.arange(len(self))
    if np.array_equal(index, everything):
      return self
    return Instances(self.masks[index], self.scores[index], self.boxes[index],
                     self.classes[index])


@functools.partial(jax.jit, static_argnums=1)
def _decode(outputs: dict, image_hw: tuple[int, int]) -> dict:
  return yolo_decode.decode_predictions(outputs, image_hw)


def decode_to_host(outputs: dict, image_hw: tuple[int, int]) -> dict:
  """Head outputs (batch [B, ...]) -> NumPy dict of `decode_predictions` fields."""
  decoded = jax.device_get(_decode(outputs, tuple(image_hw)))
  return {key: np.asarray(value, np.float32) for key, value in decoded.items()}


def greedy_keep(iou: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy suppression: [N, N] IoU of items in descending score order -> [N] bool kept.

  An item is dropped when its IoU with a kept, higher-ranked item exceeds the threshold.
  """
  suppressed = np.zeros(len(iou), bool)
  for i in range(len(iou)):
    if not suppressed[i]:
      suppressed[i + 1:] |= iou[i, i + 1:] > iou_threshold
  return ~suppressed


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy box NMS: [N, 4] xyxy, [N] scores -> indices kept, by descending score."""
  order = np.argsort(-scores, kind="stable")
  iou = box_geometry.pairwise_box_iou(boxes[order], boxes[order])
  return order[greedy_keep(iou, iou_threshold)]


def resample_matrix(out_len: int, scale: float, offset: float, source_len: int,
                    source_stride: float) -> np.ndarray:
  """Bilinear weights [out_len, source_len] from a source grid to original pixels.

  Original pixel i (centre i + 0.5) sits at input coordinate (i + 0.5) * scale +
  offset, i.e. at source index that / source_stride - 0.5 (half-pixel centres,
  edges clamped, like `align_corners=False`).
  """
  position = ((np.arange(out_len) + 0.5) * scale + offset) / source_stride - 0.5
  position = np.clip(position, 0, source_len - 1)
  low = np.floor(position).astype(int)
  high = np.minimum(low + 1, source_len - 1)
  frac = position - low
  weights = np.zeros((out_len, source_len), np.float32)
  np.add.at(weights, (np.arange(out_len), low), 1 - frac)
  np.add.at(weights, (np.arange(out_len), high), frac)
  return weights


def _letterbox_matrices(letterbox: Letterbox, original_hw: Sequence[int],
                        source_hw: Sequence[int], source_stride: float):
  """Row [H, Hs] and column [W, Ws] weights from a source grid to original pixels."""
  rows = resample_matrix(original_hw[0], letterbox.scale, letterbox.pad_top, source_hw[0],
                         source_stride)
  cols = resample_matrix(original_hw[1], letterbox.scale, letterbox.pad_left, source_hw[1],
                         source_stride)
  return rows, cols


def unletterbox_image(image: np.ndarray, letterbox: Letterbox,
                      original_hw: Sequence[int]) -> np.ndarray:
  """[S, S] network input plane -> [H, W] original-resolution view (bilinear)."""
  rows, cols = _letterbox_matrices(letterbox, original_hw, image.shape, 1.0)
  return rows @ np.asarray(image, np.float32) @ cols.T


def _box_window(box: np.ndarray, image_hw: Sequence[int],
                tolerance: float = 1e-3) -> tuple[slice, slice]:
  """Pixels overlapping the [4] xyxy box by more than `tolerance`, as (row, col) slices."""
  x1, y1, x2, y2 = np.asarray(box, np.float64) + [tolerance, tolerance, -tolerance, -tolerance]
  rows = slice(int(np.floor(y1)), int(min(np.ceil(y2), image_hw[0])))
  cols = slice(int(np.floor(x1)), int(min(np.ceil(x2), image_hw[1])))
  return rows, cols


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """[H, W] bool -> (row0, row1, col0, col1) half-open bounding extent; None if empty."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if not len(rows):
    return None
  return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(mask)
  if count <= 1:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (np.argmax(sizes) + 1)


def assemble_masks(coefs: np.ndarray, protos: np.ndarray, boxes: np.ndarray,
                   letterbox: Letterbox, original_hw: Sequence[int],
                   keep_largest_component: bool = False, margin: float = 0.0) -> np.ndarray:
  """Instance masks in original pixels.

  Args:
    coefs: [N, nm] mask coefficients.
    protos: [Hp, Wp, nm] prototypes of the same image.
    boxes: [N, 4] xyxy in original pixels; each mask is cropped to the pixels its
      box overlaps.
    letterbox: placement of the original image in the network input.
    original_hw: (H, W) of the original image.
    keep_largest_component: keep only each mask's largest 4-connected component.
    margin: pixels added to each side of a box before the mask is cropped to it (a
      box slightly too small then no longer cuts its neuron straight).
  Returns:
    [N, H, W] bool, logit > 0 after bilinear resampling of the logits.
  """
  rows, cols = _letterbox_matrices(letterbox, original_hw, protos.shape[:2], PROTO_STRIDE)
  num_protos = protos.shape[-1]
  logits = (np.asarray(coefs, np.float32) @ np.asarray(protos, np.float32).reshape(
      -1, num_protos).T).reshape(len(coefs), *protos.shape[:2])  # [N, Hp, Wp]
  masks = np.zeros((len(coefs), *original_hw), bool)
  for i, box in enumerate(boxes):
    row_window, col_window = _box_window(np.maximum(box + [-margin, -margin, margin, margin], 0),
                                         original_hw)
    row_weights, row_source = _used_sources(rows[row_window])
    col_weights, col_source = _used_sources(cols[col_window])
    crop = row_weights @ logits[i, row_source, col_source] @ col_weights.T > 0
    if keep_largest_component:
      crop = _largest_component(crop)
    masks[i, row_window, col_window] = crop
  return masks


def _used_sources(weights: np.ndarray) -> tuple[np.ndarray, slice]:
  """[n, source_len] interpolation weights -> (weights on the used span, that span)."""
  used = np.flatnonzero(weights.any(axis=0))
  if not len(used):
    return weights[:, :0], slice(0, 0)
  span = slice(used[0], used[-1] + 1)
  return weights[:, span], span


def postprocess_image(decoded: dict, original_hw: Sequence[int], letterbox: Letterbox = IDENTITY,
                      settings: PostprocessSettings = PostprocessSettings()) -> Instances:
  """One image's decoded predictions -> Instances in original pixels.

  Args:
    decoded: NumPy `decode_predictions` fields of one image: "boxes_xyxy" [A, 4]
      (input pixels), "scores" [A, nc], "mask_coef" [A, nm], "protos" [Hp, Wp, nm].
    original_hw: (H, W) of the original image.
    letterbox: placement of the original image in the [S, S] input.
    settings: thresholds.
  """
  original_hw = tuple(int(n) for n in original_hw)
  class_scores = decoded["scores"]
  scores = class_scores.max(axis=-1)
  candidates = np.flatnonzero(scores >= settings.conf_threshold)
  candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
  candidates = candidates[:settings.max_candidates]
  boxes = decoded["boxes_xyxy"][candidates]
  keep = candidates[nms(boxes, scores[candidates], settings.nms_iou)][:settings.max_detections]
  if not len(keep):
    return Instances.empty(original_hw)
  boxes = boxes_to_original(decoded["boxes_xyxy"][keep], letterbox, original_hw).astype(np.float32)
  masks = assemble_masks(decoded["mask_coef"][keep], decoded["protos"], boxes, letterbox,
                         original_hw, settings.keep_largest_component, settings.mask_margin)
  instances = Instances(masks, scores[keep].astype(np.float32), boxes,
                        class_scores[keep].argmax(-1).astype(np.int32))
  return instances.select(masks.sum(axis=(1, 2)) >= max(settings.min_area, 1))


def postprocess_batch(outputs: dict, original_hws: Sequence[Sequence[int]],
                      letterboxes: Sequence[Letterbox] | None = None,
                      settings: PostprocessSettings = PostprocessSettings()) -> list[Instances]:
  """Head outputs of a [B, S, S, C] batch -> one Instances per original image.

  Args:
    outputs: head outputs per the `yolo_decode` contract.
    original_hws: (H, W) of each original image; images of the batch beyond
      len(original_hws) (batch padding) are ignored.
    letterboxes: placement of each original in the input (default: unpadded).
    settings: thresholds.
  """
  letterboxes = letterboxes or [IDENTITY] * len(original_hws)
  protos_hw = np.shape(outputs["protos"])[1:3]
  decoded = decode_to_host(outputs, (protos_hw[0] * PROTO_STRIDE, protos_hw[1] * PROTO_STRIDE))
  return [postprocess_image({k: v[i] for k, v in decoded.items()}, hw, letterbox, settings)
          for i, (hw, letterbox) in enumerate(zip(original_hws, letterboxes))]
