"""Whole-volume inference with overlapping windows, smooth blending and flip TTA.

The model is a `predict_fn(batch [B, d, h, w, C]) -> [B, d, h, w, K]` (jitted on device;
called with a fixed batch size so it compiles once). The volume is any sliceable
[D, H, W] or [D, H, W, C] array: a NumPy array, an `np.memmap` or an h5py dataset.
Windows are read one at a time (reflect padding is applied per window, so the input is
never loaded whole) and predictions are accumulated as weighted sums over a z-slab of
one window depth; every finished z-plane is normalised and written to `out` (an
in-memory array, an np.memmap or an h5py dataset [D, H, W, K]). Host memory stays at
one slab plus one batch, whatever the volume size.

Windows start every `stride` voxels in the padded volume, with a last window flush with
the end; `padding` voxels of reflection on each side let border voxels be covered by
well-weighted window centres (the reference SNEMI3D setting: window 6x96x96, stride
3x48x48, padding 3x48x48).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry

BLENDINGS: Registry = Registry("window blending")
MIN_WEIGHT = 1e-3  # blending weights are floored so every voxel of a window counts.


def _axis_weights_gaussian(n: int, sigma_scale: float = 0.125) -> np.ndarray:
  centre = (n - 1) / 2.0
  return np.exp(-0.5 * ((np.arange(n) - centre) / max(n * sigma_scale, 1e-6))**2)


def _axis_weights_cosine(n: int) -> np.ndarray:
  return 0.5 * (1.0 - np.cos(2.0 * np.pi * (np.arange(n) + 0.5) / n))


BLENDINGS.register("gaussian")(_axis_weights_gaussian)
BLENDINGS.register("cosine")(_axis_weights_cosine)


def blending_weights(window: Sequence[int], kind: str = "gaussian") -> np.ndarray:
  """[d, h, w] float32 separable window weights, 1 at the centre, >= MIN_WEIGHT."""
  axis_fn = BLENDINGS.get(kind)
  weights = np.ones((), np.float64)
  for n in window:
    weights = np.multiply.outer(weights, axis_fn(n) / axis_fn(n).max())
  return np.maximum(weights, MIN_WEIGHT).astype(np.float32)


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Window starts along an axis of `size` >= window: every stride, plus one flush at the end."""
  starts = list(range(0, size - window + 1, stride))
  if starts[-1] != size - window:
    starts.append(size - window)
  return starts


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
  """Padded coordinates -> source ones, mirrored without repeating the edge (np.pad 'reflect')."""
  if size == 1:
    return np.zeros_like(index)
  period = 2 * (size - 1)
  index = np.mod(index, period)
  return np.where(index < size, index, period - index)


def read_window(volume, start: Sequence[int], window: Sequence[int],
                pad_before: Sequence[int]) -> np.ndarray:
  """Reads one [d, h, w, C] window at padded `start` from a sliceable [D, H, W, C] volume.

  Only the source box the window needs is sliced out; reflection happens in memory.
  """
  sources = [_reflect(np.arange(s - p, s - p + n), size)
             for s, n, p, size in zip(start, window, pad_before, volume.shape[:3])]
  box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in sources)
  block = np.asarray(volume[box])
  return block[np.ix_(*[i - i.min() for i in sources])]


def _flip_average(predict_fn, batch: np.ndarray, flip_axes: Sequence[int],
                  channel_offsets: np.ndarray | None) -> np.ndarray:
  """Mean of predict_fn over all flips of `flip_axes` (spatial 0..2) of a [B, d, h, w, C] batch.

  Outputs are flipped back. A channel whose offset (channel_offsets [K, 3], as for
  affinities) is nonzero on a flipped axis describes, after the flip back, the pair
  (p, p - o) at p: it is shifted by -o to the convention (p, p + o), and the voxels
  this leaves undefined at the window edge average only the flips that define them.
  """
  total, count = 0.0, 0.0
  for num in range(len(flip_axes) + 1):
    for axes in itertools.combinations(flip_axes, num):
      spatial = tuple(a + 1 for a in axes)
      flipped = np.ascontiguousarray(np.flip(batch, spatial))
      out = np.flip(np.asarray(predict_fn(flipped), np.float32), spatial)
      valid = np.ones(out.shape, np.float32)
      if channel_offsets is not None:
        out, valid = _shift_pairs(out, valid, axes, channel_offsets)
      total, count = total + out * valid, count + valid
  return total / count


def _shift_pairs(out: np.ndarray, valid: np.ndarray, axes: Sequence[int], offsets: np.ndarray):
  """Moves flipped pair channels back to the (p, p + o) convention: value[r] = out[r + o]."""
  out, valid = out.copy(), valid.copy()
  for k, offset in enumerate(offsets):
    for axis in axes:
      if offset[axis]:
        out[..., k] = _shifted(out[..., k], axis + 1, int(offset[axis]))
        valid[..., k] = _shifted(valid[..., k], axis + 1, int(offset[axis]))
  return out, valid


def _shifted(array: np.ndarray, dim: int, o: int) -> np.ndarray:
  """result[..., r, ...] = array[..., r + o, ...] along `dim`; 0 where r + o is outside."""
  n = array.shape[dim]
  src, dst = [slice(None)] * array.ndim, [slice(None)] * array.ndim
  src[dim] = slice(max(o, 0), n + min(o, 0))
  dst[dim] = slice(max(-o, 0), n - max(o, 0))
  result = np.zeros_like(array)
  result[tuple(dst)] = array[tuple(src)]
  return result


class _SlabAccumulator:
  """Weighted sums over padded z-planes [z, Hp, Wp, K]; finished planes go to `out`."""

  def __init__(self, out, pad_before: Sequence[int], plane_shape: Sequence[int]):
    self.out, self.pad = out, pad_before
    self.first = 0  # padded z of the buffer's first plane
    self.sums = np.zeros((0, *plane_shape, out.shape[-1]), np.float32)
    self.weights = np.zeros((0, *plane_shape), np.float32)

  def add(self, start: Sequence[int], values: np.ndarray, weights: np.ndarray):
    """Adds one window's [d, h, w, K] values with [d, h, w] weights at padded `start`."""
    z0, y0, x0 = start
    d, h, w = weights.shape
    grow = z0 + d - self.first - len(self.sums)
    if grow > 0:
      self.sums = np.concatenate([self.sums, np.zeros((grow, *self.sums.shape[1:]), np.float32)])
      self.weights = np.concatenate([self.weights, np.zeros((grow, *self.weights.shape[1:]),
                                                            np.float32)])
    zs = slice(z0 - self.first, z0 - self.first + d)
    self.sums[zs, y0:y0 + h, x0:x0 + w] += values * weights[..., None]
    self.weights[zs, y0:y0 + h, x0:x0 + w] += weights

  def flush_before(self, z_end: int):
    """Normalises and writes padded planes [first, z_end) that are in the volume."""
    n = max(0, min(z_end - self.first, len(self.sums)))
    depth, height, width = self.out.shape[:3]
    pz, py, px = self.pad
    lo, hi = max(self.first, pz), min(self.first + n, pz + depth)
    if hi > lo:
      part = slice(lo - self.first, hi - self.first)
      planes = (self.sums[part, py:py + height, px:px + width]
                / self.weights[part, py:py + height, px:px + width, None])
      self.out[lo - pz:hi - pz] = planes.astype(self.out.dtype)
    self.sums, self.weights = self.sums[n:], self.weights[n:]
    self.first += n


def sliding_window_predict(
    volume,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    window: Sequence[int],
    stride: Sequence[int],
    *,
    num_outputs: int,
    padding: Sequence[int] = (0, 0, 0),
    batch_size: int = 1,
    blend: str = "gaussian",
    flip_axes: Sequence[int] = (),
    channel_offsets: Sequence[Sequence[int]] | None = None,
    out=None,
):
  """Predicts a whole volume window by window.

  Args:
    volume: sliceable [D, H, W] or [D, H, W, C] (NumPy, np.memmap, h5py dataset).
    predict_fn: [B, d, h, w, C] float32 -> [B, d, h, w, K]; always called with B =
      batch_size (the last batch is zero-filled).
    window, stride, padding: (z, y, x) window size, step and reflect padding per side;
      axes shorter than the window are padded further at the end.
    num_outputs: K.
    blend: "gaussian" or "cosine" (`BLENDINGS`).
    flip_axes: spatial axes (0 = z, 1 = y, 2 = x) whose flips are averaged, e.g.
      (1, 2) for the 4 in-plane flips.
    channel_offsets: [K] (dz, dy, dx) offsets of affinity channels ((0, 0, 0) for the
      others) so flipped affinities are shifted back correctly; None = no pair channels.
    out: writable [D, H, W, K] array (np.memmap, h5py dataset...); None allocates a
      float32 NumPy array.

  Returns:
    `out`, holding the blended [D, H, W, K] predictions.
  """
  shape = tuple(volume.shape)
  if len(shape) == 3:
    volume = _WithChannel(volume)
  elif len(shape) != 4:
    raise DataError("volume", f"expected [D, H, W] or [D, H, W, C], got shape {shape}")
  size = tuple(volume.shape[:3])
  if (len(window) != 3 or len(stride) != 3 or any(n < 1 for n in tuple(window) + tuple(stride))
      or any(s > w for s, w in zip(stride, window))):
    raise DataError("sliding window", f"window {tuple(window)} and stride {tuple(stride)} must be "
                    "3 positive sizes with stride <= window (every voxel covered)")
  out = np.zeros((*size, num_outputs), np.float32) if out is None else out
  if tuple(out.shape) != (*size, num_outputs):
    raise DataError("sliding window output", f"shape {out.shape} != {(*size, num_outputs)}")
  offsets = None if channel_offsets is None else np.asarray(channel_offsets, np.int64)
  if offsets is not None and offsets.shape != (num_outputs, 3):
    raise DataError("channel_offsets", f"expected [{num_outputs}, 3], got {offsets.shape}")
  pad_before = tuple(padding)
  padded = [max(n + 2 * p, w) for n, p, w in zip(size, pad_before, window)]
  weights = blending_weights(window, blend)
  accumulator = _SlabAccumulator(out, pad_before, padded[1:])
  plane_starts = list(itertools.product(*[window_starts(n, w, s) for n, w, s in
                                          zip(padded[1:], window[1:], stride[1:])]))
  for z0 in window_starts(padded[0], window[0], stride[0]):
    accumulator.flush_before(z0)
    for first in range(0, len(plane_starts), batch_size):
      starts = [(z0, *yx) for yx in plane_starts[first:first + batch_size]]
      batch = np.zeros((batch_size, *window, volume.shape[3]), np.float32)
      for i, start in enumerate(starts):
        batch[i] = read_window(volume, start, window, pad_before)
      predictions = _flip_average(predict_fn, batch, flip_axes, offsets)
      for start, prediction in zip(starts, predictions):
        accumulator.add(start, prediction, weights)
  accumulator.flush_before(padded[0])
  return out


class _WithChannel:
  """A [D, H, W] sliceable seen as [D, H, W, 1] (slices only the spatial axes)."""

  def __init__(self, volume):
    self.volume = volume
    self.shape = (*volume.shape, 1)

  def __getitem__(self, box):
    return np.asarray(self.volume[box])[..., None]
