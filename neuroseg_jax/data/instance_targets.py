"""Fixed-shape training targets for YOLO-style instance segmentation.

image [H, W, C] + masks [N, H, W] -> a letterboxed S x S example whose arrays
have the same shapes for every image (so the train step compiles once):

  {"image":  [S, S, C] float32   aspect ratio kept, centred, zero padding,
   "boxes":  [M, 4] float32      xyxy in letterboxed pixels, pixel edges
                                 (x1 = first column, x2 = last column + 1),
   "classes": [M] int32          0 (neuron),
   "valid":  [M] bool            real instances first, then padding,
   "masks":  [M, S/4, S/4] uint8 prototype-resolution masks (4x4 majority),
   "letterbox": [3] float32      (scale, pad_top, pad_left),
   "orig_hw": [2] int32}         (H, W) of the input.

A letterboxed coordinate is original * scale + pad (continuous coordinates,
pixel i spanning [i, i + 1)); `Letterbox.boxes_to_original` inverts it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.transforms2d import crop_and_resize

MASK_STRIDE = 4


@dataclasses.dataclass(frozen=True)
class Letterbox:
  """Maps an (H, W) image onto an S x S canvas: canvas = original * scale + pad."""
  scale: float
  pad_top: float
  pad_left: float

  @classmethod
  def fit(cls, image_hw, size: int) -> "Letterbox":
    scale = size / max(image_hw)
    return cls(scale, (size - image_hw[0] * scale) / 2, (size - image_hw[1] * scale) / 2)

  @classmethod
  def from_array(cls, values) -> "Letterbox":
    """From the example's "letterbox" entry [3] (scale, pad_top, pad_left)."""
    return cls(*(float(v) for v in values))

  def as_array(self) -> np.ndarray:
    return np.array([self.scale, self.pad_top, self.pad_left], np.float32)

  def source_window(self, size: int) -> tuple[float, float, float, float]:
    """The (top, left, height, width) of the original image seen by the canvas."""
    return (-self.pad_top / self.scale, -self.pad_left / self.scale,
            size / self.scale, size / self.scale)

  def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
    """[..., 4] xyxy canvas pixels -> [..., 4] xyxy original pixels."""
    offset = np.array([self.pad_left, self.pad_top] * 2, np.float32)
    return (np.asarray(boxes) - offset) / self.scale


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """[N, H, W] bool (non-empty) -> [N, 4] float32 xyxy pixel-edge bounding boxes."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  first = lambda a: np.argmax(a, axis=1)
  last = lambda a: a.shape[1] - np.argmax(a[:, ::-1], axis=1)
  return np.stack([first(cols), first(rows), last(cols), last(rows)], axis=1).astype(np.float32)


def downsample_masks(masks: np.ndarray, boxes: np.ndarray, stride: int = MASK_STRIDE) -> np.ndarray:
  """[N, H, W] bool with their [N, 4] xyxy boxes (H, W divisible by stride) ->
  [N, H/stride, W/stride] uint8: 1 where at least half of the stride x stride
  block is inside the mask. Only the blocks under each box are visited."""
  n, height, width = masks.shape
  out = np.zeros((n, height // stride, width // stride), np.uint8)
  for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
    r0, c0 = y1 // stride, x1 // stride
    r1, c1 = -(-y2 // stride), -(-x2 // stride)
    block = masks[i, r0 * stride:r1 * stride, c0 * stride:c1 * stride]
    counts = block.reshape(r1 - r0, stride, c1 - c0, stride).sum(axis=(1, 3))
    out[i, r0:r1, c0:c1] = 2 * counts >= stride * stride
  return out


def make_instance_targets(image: np.ndarray, masks: np.ndarray, size: int, max_instances: int,
                          name: str = "example") -> dict:
  """image [H, W, C] float32 + masks [N, H, W] bool -> fixed-shape targets (module doc).

  Instances that vanish when the image is scaled down are dropped. More than
  `max_instances` instances is a DataError (raise config.max_instances).
  """
  if size % MASK_STRIDE:
    raise ValueError(f"letterbox size {size} must be divisible by {MASK_STRIDE}")
  if masks.shape[1:] != image.shape[:2]:
    raise DataError(name, f"masks {masks.shape[1:]} do not match the image {image.shape[:2]}")
  letterbox = Letterbox.fit(image.shape[:2], size)
  boxed = crop_and_resize({"image": image, "masks": masks.astype(bool)},
                          letterbox.source_window(size), (size, size))
  count = len(boxed["masks"])
  if count > max_instances:
    raise DataError(name, f"{count} instances, more than max_instances={max_instances}; "
                    "raise config.max_instances")
  proto_hw = size // MASK_STRIDE
  boxes = np.zeros((max_instances, 4), np.float32)
  proto_masks = np.zeros((max_instances, proto_hw, proto_hw), np.uint8)
  if count:
    boxes[:count] = mask_boxes(boxed["masks"])
    proto_masks[:count] = downsample_masks(boxed["masks"], boxes[:count])
  return {
      "image": boxed["image"],
      "boxes": boxes,
      "classes": np.zeros(max_instances, np.int32),
      "valid": np.arange(max_instances) < count,
      "masks": proto_masks,
      "letterbox": letterbox.as_array(),
      "orig_hw": np.array(image.shape[:2], np.int32),
  }
