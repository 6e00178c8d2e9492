"""Microscopy augmentations for 2-D examples, composable from a string.

An example is a dict with "image" [H, W, C] float32 and optionally "masks"
[N, H, W] bool (other keys pass through). Every op is a pure function
(example, np.random.Generator) -> example. Geometric ops move image and masks
together (image: bilinear, masks: nearest); photometric ops touch only the image.
Instances whose mask is empty after a geometric op are dropped.

  transform = parse_transforms("flip_lr|rot90|resized_crop(0.3, 1.0, size=96)|noise(0.05)")
  example = transform(example, np.random.default_rng(seed))

Op arguments are Python literals; any op also takes `p=` (apply with that
probability). Registered ops: see `TRANSFORMS.names()`.
"""

from __future__ import annotations

import ast
from typing import Callable

import numpy as np
import scipy.ndimage

from neuroseg_jax.registry import Registry

Example = dict
Op = Callable[[Example, np.random.Generator], Example]
TRANSFORMS: Registry[Callable[..., Op]] = Registry("2-D transform")


# ------------------------------------------------------------ resampling helpers


def _source_coords(start: float, length: float, n_out: int) -> np.ndarray:
  """Source coordinate of each output pixel centre (pixel i has its centre at i)
  when a span [start - 0.5, start + length - 0.5) is resized to n_out pixels."""
  return start + (np.arange(n_out) + 0.5) * (length / n_out) - 0.5


def resize_image_window(image: np.ndarray, window, out_hw) -> np.ndarray:
  """Bilinear resample of image [H, W, C] over window (top, left, height, width)
  (source pixels; may extend past the image, filled with 0) -> [h, w, C].

  Downscaling is anti-aliased with a Gaussian of sigma (factor - 1) / 2."""
  top, left, height, width = window
  factors = np.array([height / out_hw[0], width / out_hw[1]])
  sigma = np.maximum((factors - 1) / 2, 0)
  if sigma.any():
    image = scipy.ndimage.gaussian_filter(image, (*sigma, 0), mode="nearest")
  offset = [_source_coords(top, height, out_hw[0])[0], _source_coords(left, width, out_hw[1])[0]]
  return np.stack([
      scipy.ndimage.affine_transform(image[..., c], factors, offset, output_shape=tuple(out_hw),
                                     order=1, mode="constant", cval=0.0)
      for c in range(image.shape[-1])], axis=-1).astype(np.float32)


def resize_masks_window(masks: np.ndarray, window, out_hw) -> np.ndarray:
  """Nearest-neighbour resample of masks [N, H, W] over the same window as
  `resize_image_window` -> [N, h, w] bool (False outside the image).

  Each instance is resampled only over its bounding box, so the cost follows the
  instances' area, not N * h * w."""
  top, left, height, width = window
  rows = np.floor(_source_coords(top, height, out_hw[0]) + 0.5).astype(int)
  cols = np.floor(_source_coords(left, width, out_hw[1]) + 0.5).astype(int)
  out = np.zeros((len(masks),) + tuple(out_hw), bool)
  row_hit, col_hit = masks.any(axis=2), masks.any(axis=1)
  for i in np.flatnonzero(row_hit.any(axis=1)):
    r0, r1 = np.flatnonzero(row_hit[i])[[0, -1]]
    c0, c1 = np.flatnonzero(col_hit[i])[[0, -1]]
    # rows / cols increase with the output index: the bounding box is one run.
    o_r0, o_r1 = np.searchsorted(rows, [r0, r1 + 1])
    o_c0, o_c1 = np.searchsorted(cols, [c0, c1 + 1])
    out[i, o_r0:o_r1, o_c0:o_c1] = masks[i][np.ix_(rows[o_r0:o_r1], cols[o_c0:o_c1])]
  return out


def drop_empty_masks(example: Example) -> Example:
  """Removes instances whose mask [H, W] has no pixel left."""
  masks = example["masks"]
  keep = masks.any(axis=(1, 2))
  return example if keep.all() else {**example, "masks": masks[keep]}


def crop_and_resize(example: Example, window, out_hw) -> Example:
  """Image [H, W, C] and masks [N, H, W] over window (top, left, height, width)
  -> [h, w, C] and [N', h, w] (empty instances dropped)."""
  out = {**example, "image": resize_image_window(example["image"], window, out_hw)}
  if "masks" in example:
    out = drop_empty_masks({**out, "masks": resize_masks_window(example["masks"], window, out_hw)})
  return out


def _spatial(example: Example, image_fn, masks_fn) -> Example:
  """Applies image_fn to "image" [H, W, C] and masks_fn to "masks" [N, H, W]."""
  out = {**example, "image": np.ascontiguousarray(image_fn(example["image"]))}
  if "masks" in example:
    out["masks"] = np.ascontiguousarray(masks_fn(example["masks"]))
  return out


def _image_size(example: Example) -> tuple[int, int]:
  return example["image"].shape[:2]


def _as_hw(size, example: Example) -> tuple[int, int]:
  if size is None:
    return _image_size(example)
  return (size, size) if np.isscalar(size) else tuple(size)


# ---------------------------------------------------------------- geometric ops


@TRANSFORMS.register("flip_lr")
def flip_lr() -> Op:
  """Mirrors left-right with probability 1/2."""
  def op(example, rng):
    if rng.random() >= 0.5:
      return example
    return _spatial(example, lambda im: im[:, ::-1], lambda m: m[:, :, ::-1])
  return op


@TRANSFORMS.register("flip_ud")
def flip_ud() -> Op:
  """Mirrors up-down with probability 1/2."""
  def op(example, rng):
    if rng.random() >= 0.5:
      return example
    return _spatial(example, lambda im: im[::-1], lambda m: m[:, ::-1])
  return op


@TRANSFORMS.register("rot90")
def rot90() -> Op:
  """Rotates by k * 90 degrees, k uniform in {0, 1, 2, 3}."""
  def op(example, rng):
    k = int(rng.integers(4))
    return _spatial(example, lambda im: np.rot90(im, k, axes=(0, 1)),
                    lambda m: np.rot90(m, k, axes=(1, 2)))
  return op


@TRANSFORMS.register("scale_crop")
def scale_crop(min_scale: float, max_scale: float) -> Op:
  """Zooms by s ~ U(min_scale, max_scale) about a random point, same output size.

  s > 1 crops a random 1/s window; s < 1 shrinks the image into a random spot of
  a zero-padded canvas."""
  def op(example, rng):
    out_hw = _image_size(example)
    scale = rng.uniform(min_scale, max_scale)
    height, width = out_hw[0] / scale, out_hw[1] / scale
    top = rng.uniform(min(0.0, out_hw[0] - height), max(0.0, out_hw[0] - height))
    left = rng.uniform(min(0.0, out_hw[1] - width), max(0.0, out_hw[1] - width))
    return crop_and_resize(example, (top, left, height, width), out_hw)
  return op


@TRANSFORMS.register("resized_crop")
def resized_crop(min_area: float, max_area: float, size=None,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Op:
  """Random crop covering a fraction U(min_area, max_area) of the image with
  log-uniform aspect ratio in `ratio`, resized to `size` (int or (h, w); default:
  the input size) -> a fixed output size. Falls back to the whole image after 10
  windows that do not fit."""
  def op(example, rng):
    in_h, in_w = _image_size(example)
    window = (0.0, 0.0, float(in_h), float(in_w))
    for _ in range(10):
      area = rng.uniform(min_area, max_area) * in_h * in_w
      aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
      height, width = np.sqrt(area / aspect), np.sqrt(area * aspect)
      if height <= in_h and width <= in_w:
        window = (rng.uniform(0, in_h - height), rng.uniform(0, in_w - width), height, width)
        break
    return crop_and_resize(example, window, _as_hw(size, example))
  return op


# -------------------------------------------------------------- photometric ops


def _photometric(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> Op:
  def op(example, rng):
    return {**example, "image": fn(example["image"], rng).astype(np.float32)}
  return op


@TRANSFORMS.register("brightness")
def brightness(delta: float) -> Op:
  """Adds U(-delta, delta) to every pixel."""
  return _photometric(lambda im, rng: im + rng.uniform(-delta, delta))


@TRANSFORMS.register("contrast")
def contrast(delta: float) -> Op:
  """Scales each channel about its mean by U(1 - delta, 1 + delta)."""
  def fn(im, rng):
    mean = im.mean(axis=(0, 1), keepdims=True)
    return (im - mean) * rng.uniform(1 - delta, 1 + delta) + mean
  return _photometric(fn)


@TRANSFORMS.register("gamma")
def gamma(low: float, high: float) -> Op:
  """max(image, 0) ** g with g ~ U(low, high) (for images normalised to [0, 1])."""
  return _photometric(lambda im, rng: np.maximum(im, 0) ** rng.uniform(low, high))


@TRANSFORMS.register("noise")
def noise(max_std: float) -> Op:
  """Adds Gaussian noise of standard deviation U(0, max_std)."""
  return _photometric(lambda im, rng: im + rng.normal(0, rng.uniform(0, max_std), im.shape))


@TRANSFORMS.register("blur")
def blur(min_sigma: float, max_sigma: float) -> Op:
  """Gaussian blur of each channel with sigma ~ U(min_sigma, max_sigma) pixels."""
  def fn(im, rng):
    sigma = rng.uniform(min_sigma, max_sigma)
    return scipy.ndimage.gaussian_filter(im, (sigma, sigma, 0), mode="reflect")
  return _photometric(fn)


# ---------------------------------------------------------------------- parsing


def with_probability(op: Op, p: float) -> Op:
  """Applies `op` with probability p, else returns the example unchanged."""
  def maybe(example, rng):
    return op(example, rng) if rng.random() < p else example
  return maybe


def parse_op(text: str) -> Op:
  """"name" or "name(arg, ..., key=value, p=prob)" -> an op from TRANSFORMS."""
  try:
    call = ast.parse(text.strip(), mode="eval").body
    if isinstance(call, ast.Name):
      name, args, kwargs = call.id, [], {}
    elif isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
      name = call.func.id
      args = [ast.literal_eval(a) for a in call.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    else:
      raise ValueError("not a call")
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"cannot parse transform {text!r}: expected name or name(literals)") from e
  probability = kwargs.pop("p", None)
  op = TRANSFORMS.get(name)(*args, **kwargs)
  return op if probability is None else with_probability(op, probability)


def parse_transforms(spec: str) -> Op:
  """"op1|op2(...)|..." -> one op applying them left to right ("" = identity)."""
  ops = [parse_op(part) for part in spec.split("|") if part.strip()]

  def apply(example: Example, rng: np.random.Generator) -> Example:
    for op in ops:
      example = op(example, rng)
    return example
  return apply
