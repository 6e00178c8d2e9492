"""Training crops from labeled EM slices, for 2-D models on anisotropic serial sections.

Serial-section EM (ISBI 2012: 4 x 4 nm pixels, 50 nm sections) is 12x coarser in z than
in-plane, and neighbouring sections are often misaligned, so the 2-D models here learn
from single slices: `random_slice_crop` draws a [h, w] window from a random labeled
slice (images [N, H, W], labels [N, H, W] in memory) and augments it with:
  * the 8 dihedral transforms (flips and 90-degree rotations; exact, no resampling),
  * elastic deformation: a smooth random displacement field (Gaussian-filtered
    white noise of `elastic_sigma` px, scaled to `elastic_alpha` px RMS), linear
    interpolation for the image and nearest-neighbour for the labels,
  * intensity: contrast x U(1 - c, 1 + c), brightness + U(-b, b), gamma
    U(1 - g, 1 + g) on the [0, 1]-scaled image (after `intensity.standardize`'s
    percentile scaling, before its centring).
Targets are made from the augmented labels (`boundary_map`), so they stay exact.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from neuroseg_jax.data import intensity
from neuroseg_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class SliceAugmentation:
  """Augmentation strengths; all zero / False = none (see module doc)."""
  dihedral: bool = True
  elastic_alpha: float = 0.0
  elastic_sigma: float = 8.0
  contrast: float = 0.0
  brightness: float = 0.0
  gamma: float = 0.0


class SliceCrop(NamedTuple):
  image: np.ndarray   # [h, w] float32, standardised.
  labels: np.ndarray  # [h, w] instance labels, 0 = membrane / unlabeled.


def boundary_map(labels: np.ndarray) -> np.ndarray:
  """[..., H, W] instance labels -> [..., H, W] float32 boundary target in {0, 1}.

  1 where the label is 0 (membrane in a membrane map) or where two instances touch
  (a pixel whose in-plane 4-neighbour holds another nonzero id), so touching
  instances are separated by a boundary of 2 pixels and a membrane map's target is
  exactly its membrane.
  """
  labels = np.asarray(labels)
  boundary = labels == 0
  for axis in (-2, -1):
    lead = [slice(None)] * labels.ndim
    lag = [slice(None)] * labels.ndim
    lead[axis], lag[axis] = slice(1, None), slice(None, -1)
    a, b = labels[tuple(lead)], labels[tuple(lag)]
    differs = (a != b) & (a != 0) & (b != 0)
    boundary[tuple(lead)] |= differs
    boundary[tuple(lag)] |= differs
  return boundary.astype(np.float32)


def _elastic_fields(shape, alpha: float, sigma: float, rng) -> np.ndarray:
  """Two smooth displacement fields [2, h, w] with RMS `alpha` px."""
  fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
                     for _ in range(2)])
  return fields * (alpha / max(float(np.sqrt((fields ** 2).mean())), 1e-12))


def _photometric(scaled: np.ndarray, aug: SliceAugmentation, rng) -> np.ndarray:
  if aug.gamma:
    scaled = np.clip(scaled, 0.0, 1.0) ** rng.uniform(1 - aug.gamma, 1 + aug.gamma)
  if aug.contrast:
    mean = scaled.mean()
    scaled = (scaled - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
  if aug.brightness:
    scaled = scaled + rng.uniform(-aug.brightness, aug.brightness)
  return scaled.astype(np.float32)


def random_slice_crop(images: np.ndarray, labels: np.ndarray, crop: tuple[int, int],
                      rng: np.random.Generator, stats: intensity.IntensityStats,
                      aug: SliceAugmentation = SliceAugmentation()) -> SliceCrop:
  """A random augmented [h, w] crop of a random slice of images / labels [N, H, W]."""
  n, height, width = images.shape
  h, w = crop
  if h > height or w > width:
    raise DataError("training slices", f"crop {crop} is larger than the slices "
                    f"({height}, {width})")
  z = int(rng.integers(n))
  y, x = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
  image = images[z, y:y + h, x:x + w].astype(np.float32)
  label = labels[z, y:y + h, x:x + w]
  if aug.dihedral:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    image, label = np.rot90(image, k), np.rot90(label, k)
    if flip:
      image, label = image[:, ::-1], label[:, ::-1]
  if aug.elastic_alpha:
    dy, dx = _elastic_fields((h, w), aug.elastic_alpha, aug.elastic_sigma, rng)
    grid_y, grid_x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([grid_y + dy, grid_x + dx])
    image = ndimage.map_coordinates(image, coords, order=1, mode="reflect")
    label = ndimage.map_coordinates(label, coords, order=0, mode="reflect")
  scaled = intensity.standardize(np.ascontiguousarray(image), stats,
                                 jitter=lambda s: _photometric(s, aug, rng))
  return SliceCrop(scaled.astype(np.float32), np.ascontiguousarray(label))
