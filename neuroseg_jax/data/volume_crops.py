"""Random 3D / 2D crops from (lazy) volumes with geometric and intensity augmentation.

Every function is a pure function of its inputs and a `np.random.Generator`, so
a crop is reproducible from (volume, crop_shape, seed). Volumes are anything with
`shape` (D, H, W) and NumPy-style slicing: np.ndarray or `em_volumes.LazyVolume`.
The same geometric transform is applied to every label volume passed along;
intensity jitter only touches the raw crop, which is standardised by
`intensity.standardize` when the volume's statistics are given.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from neuroseg_jax.data.intensity import IntensityStats, standardize
from neuroseg_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class CropAugmentation:
  """Augmentations drawn per crop. Intensity jitter assumes raw scaled to [0, 1].

  flips: flip each axis with probability 1/2.
  rot90: rotate in-plane (y, x) by k * 90 degrees (k in {0, 2} for non-square crops).
  transpose_axes: axes that may be permuted among themselves, e.g. (0, 1, 2) for
    isotropic data; () for anisotropic EM (z never swaps with y, x). The crop
    must have equal sizes along them.
  contrast: range of a factor applied around the crop mean.
  brightness: range of an added offset.
  gamma: range of an exponent applied after clipping to [0, 1].
  With the default (identity) ranges no intensity jitter (and no clipping) happens.
  """
  flips: bool = True
  rot90: bool = True
  transpose_axes: tuple = ()
  contrast: tuple = (1.0, 1.0)
  brightness: tuple = (0.0, 0.0)
  gamma: tuple = (1.0, 1.0)

  @property
  def jitters_intensity(self) -> bool:
    return (tuple(self.contrast), tuple(self.brightness), tuple(self.gamma)) != (
        (1.0, 1.0), (0.0, 0.0), (1.0, 1.0))


class Crop(NamedTuple):
  raw: np.ndarray                # [*crop_shape] float32 (standardised if asked).
  labels: tuple[np.ndarray, ...]  # each [*crop_shape], dtype of its volume.


def crop_origin(volume_shape: Sequence[int], crop_shape: Sequence[int], rng: np.random.Generator,
                name: str = "volume") -> tuple[int, ...]:
  """Uniform random corner of a crop lying fully inside the volume; DataError if it cannot fit."""
  volume_shape, crop_shape = tuple(volume_shape), tuple(crop_shape)
  if len(volume_shape) != len(crop_shape) or any(
      c > v or c < 1 for c, v in zip(crop_shape, volume_shape)):
    raise DataError(name, f"crop {crop_shape} does not fit in volume of shape {volume_shape}")
  return tuple(int(rng.integers(v - c + 1)) for v, c in zip(volume_shape, crop_shape))


def _random_geometry(rng: np.random.Generator, crop_shape: tuple, aug: CropAugmentation):
  """Draws (axis permutation, flipped axes, rot90 k) for a 3-D crop."""
  perm = list(range(3))
  if aug.transpose_axes:
    axes = list(aug.transpose_axes)
    if len({crop_shape[a] for a in axes}) != 1:
      raise ValueError(f"transpose_axes {axes} need equal crop sizes, got crop {crop_shape}")
    for a, b in zip(axes, rng.permutation(axes)):
      perm[a] = int(b)
  flips = tuple(a for a in range(3) if aug.flips and rng.random() < 0.5)
  square = crop_shape[1] == crop_shape[2]
  k = int(rng.integers(4) if square else 2 * rng.integers(2)) if aug.rot90 else 0
  return tuple(perm), flips, k


def _apply_geometry(block: np.ndarray, perm: tuple, flips: tuple, k: int) -> np.ndarray:
  block = np.transpose(block, perm)
  if flips:
    block = np.flip(block, axis=flips)
  return np.ascontiguousarray(np.rot90(block, k, axes=(1, 2)))


def jitter_intensity(raw: np.ndarray, rng: np.random.Generator,
                     aug: CropAugmentation) -> np.ndarray:
  """[...] float32 in [0, 1] -> contrast, brightness and gamma jittered, clipped to [0, 1]."""
  mean = raw.mean()
  raw = (raw - mean) * rng.uniform(*aug.contrast) + mean + rng.uniform(*aug.brightness)
  return np.clip(raw, 0.0, 1.0) ** np.float32(rng.uniform(*aug.gamma))


def random_crop(volume, crop_shape: Sequence[int], rng: np.random.Generator, labels: Sequence = (),
                augmentation: CropAugmentation | None = None,
                intensity: IntensityStats | None = None) -> Crop:
  """A random crop [d, h, w] (or 2-D [h, w] from one z-slice) of `volume` and aligned labels.

  Args:
    volume: [D, H, W] raw volume (array or lazy volume).
    crop_shape: (d, h, w) for a 3-D crop, (h, w) for a 2-D crop.
    rng: the only source of randomness.
    labels: volumes of the same shape as `volume`, cropped and transformed alike.
    augmentation: None for a plain crop.
    intensity: the volume's statistics, to standardise the raw crop with
      (`intensity.standardize`; intensity jitter then acts on its [0, 1] stage);
      None keeps raw values (and jitters them as they are).

  Returns:
    Crop(raw float32 [*crop_shape], labels tuple of [*crop_shape]).
  """
  name = getattr(volume, "name", "volume")
  block_shape = tuple(crop_shape) if len(crop_shape) == 3 else (1, *crop_shape)
  if len(block_shape) != 3:
    raise DataError(name, f"crop shape {tuple(crop_shape)} must be (d, h, w) or (h, w)")
  for label in labels:
    if tuple(label.shape) != tuple(volume.shape):
      raise DataError(getattr(label, "name", "labels"), f"label shape {tuple(label.shape)} "
                      f"differs from volume shape {tuple(volume.shape)}")
  origin = crop_origin(volume.shape, block_shape, rng, name)
  window = tuple(slice(o, o + c) for o, c in zip(origin, block_shape))
  geometry = ((0, 1, 2), (), 0)  # identity: (axis order, flipped axes, rot90 k)
  if augmentation is not None:
    geometry = _random_geometry(rng, block_shape, augmentation)
  raw = _apply_geometry(np.asarray(volume[window]), *geometry).astype(np.float32)
  label_crops = tuple(_apply_geometry(np.asarray(label[window]), *geometry) for label in labels)
  jitter = None
  if augmentation is not None and augmentation.jitters_intensity:
    jitter = lambda unit: jitter_intensity(unit, rng, augmentation)
  if intensity is not None:
    raw = standardize(raw, intensity, jitter)
  elif jitter is not None:
    raw = jitter(raw)
  out_shape = tuple(crop_shape)
  return Crop(raw.reshape(out_shape), tuple(l.reshape(out_shape) for l in label_crops))
