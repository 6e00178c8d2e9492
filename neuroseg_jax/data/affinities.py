"""Training targets for 3D EM segmentation from instance labels (host side, NumPy).

Conventions (shared with `neuroseg_jax.evaluation.em_postprocess`):
  * Label volumes are integer `[D, H, W]` arrays ordered (z, y, x); 0 is background
    (or "unlabeled"), every other value is one instance.
  * Affinity channel k of an offset `o_k = (dz, dy, dx)` is
    `aff[z, y, x, k] = 1` iff the voxel p = (z, y, x) and its partner p + o_k both lie
    in the volume and carry the same nonzero label; else 0. So pairs leaving the volume
    and pairs touching background are 0 ("not connected").
  * The default offsets are the three nearest neighbours (-1, 0, 0), (0, -1, 0),
    (0, 0, -1): channel 0 links a voxel to the one above it in z, 1 to the previous row,
    2 to the previous column. This is the layout waterz expects after moving the
    channel axis first (`aff[c, z, y, x]` links (z, y, x) with its -1 neighbour on axis
    c).
  * Targets are float32 and channels-last `[D, H, W, K]` to match model outputs.
"""

from __future__ import annotations

from typing import Sequence

import fastremap
import numpy as np
from scipy import ndimage

from neuroseg_jax.errors import DataError

NEAREST_NEIGHBOUR_OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def check_label_volume(labels: np.ndarray, name: str = "labels") -> np.ndarray:
  """Returns `labels` as an ndarray after checking it is an integer [D, H, W] volume."""
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise DataError(name, f"expected an instance label volume [D, H, W], got shape {labels.shape}")
  if labels.dtype == bool:
    return labels.astype(np.uint8)
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(name, f"expected integer instance labels, got dtype {labels.dtype}")
  return labels


def _pair_slices(offset: Sequence[int], shape: Sequence[int]):
  """Slices (of p, of p + offset) selecting every pair that lies inside `shape`."""
  here, there = [], []
  for delta, size in zip(offset, shape):
    if abs(delta) >= size:
      return None
    here.append(slice(max(0, -delta), size - max(0, delta)))
    there.append(slice(max(0, delta), size + min(0, delta)))
  return tuple(here), tuple(there)


def _check_offsets(offsets: Sequence[Sequence[int]]) -> None:
  if not offsets or any(len(o) != 3 or not any(o) for o in offsets):
    raise DataError("offsets", f"expected nonzero (dz, dy, dx) triples, got {offsets!r}")


def affinities_from_labels(
    labels: np.ndarray,
    offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
) -> np.ndarray:
  """Affinity targets: [D, H, W] int labels -> [D, H, W, K] float32 in {0, 1}.

  Channel k is 1 where p and p + offsets[k] share a nonzero label (module docstring).
  """
  labels = check_label_volume(labels)
  _check_offsets(offsets)
  out = np.zeros((*labels.shape, len(offsets)), np.float32)
  for k, offset in enumerate(offsets):
    slices = _pair_slices(offset, labels.shape)
    if slices is None:
      continue
    here, there = slices
    a, b = labels[here], labels[there]
    out[here + (k,)] = (a == b) & (a != 0)
  return out


def affinity_valid_mask(
    shape: Sequence[int],
    offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
) -> np.ndarray:
  """[D, H, W, K] float32: 1 where the pair (p, p + offsets[k]) lies inside the volume.

  Multiply into loss weights so pairs leaving a training crop are not taught as cuts.
  """
  _check_offsets(offsets)
  mask = np.zeros((*shape, len(offsets)), np.float32)
  for k, offset in enumerate(offsets):
    slices = _pair_slices(offset, shape)
    if slices is not None:
      mask[slices[0] + (k,)] = 1.0
  return mask


def _window(width: int, in_plane: bool) -> tuple[int, int, int]:
  if width < 1:
    raise DataError("width", f"boundary width must be >= 1 voxel, got {width}")
  side = 2 * width + 1
  return (1, side, side) if in_plane else (side, side, side)


def instance_boundaries(
    labels: np.ndarray,
    width: int = 1,
    in_plane: bool = True,
    touching_only: bool = False,
) -> np.ndarray:
  """Boundary map: [D, H, W] int labels -> [D, H, W] bool.

  A voxel is a boundary voxel when its window of radius `width` ((1, 2w+1, 2w+1)
  in-plane, or a (2w+1)^3 cube) holds more than one label:
    * touching_only=False: any two different labels, one of them nonzero (so both sides
      of an instance/background edge and of an instance/instance edge);
    * touching_only=True: two different nonzero labels (contacts between instances
      only; background voxels in such a window are marked too).
  The volume edge is not a boundary (windows are clipped by `nearest` padding).
  """
  labels = check_label_volume(labels)
  size = _window(width, in_plane)
  high = ndimage.maximum_filter(labels, size=size, mode="nearest")
  if touching_only:
    fill = np.iinfo(labels.dtype).max
    low = ndimage.minimum_filter(np.where(labels == 0, fill, labels), size=size, mode="nearest")
    return (high != 0) & (low != fill) & (high != low)
  low = ndimage.minimum_filter(labels, size=size, mode="nearest")
  return (high != 0) & (high != low)


def erode_labels(labels: np.ndarray, width: int = 1, at_background: bool = False) -> np.ndarray:
  """In-plane label erosion before affinity targets: [D, H, W] -> [D, H, W] same dtype.

  As in Kisuk Lee's thesis and PyTorch Connectomics' border widening: a voxel whose
  (1, 2w+1, 2w+1) window holds more than one nonzero label becomes background, which
  opens a gap of about 2w voxels between touching instances. With at_background=True
  instances also shrink by w voxels where they meet background (a plain erosion).
  """
  if width == 0:
    return check_label_volume(labels).copy()
  labels = check_label_volume(labels)
  edge = instance_boundaries(labels, width, in_plane=True, touching_only=not at_background)
  return np.where(edge, 0, labels).astype(labels.dtype)


def instance_distance_target(
    labels: np.ndarray,
    in_plane: bool = True,
    background: float = -1.0,
) -> np.ndarray:
  """Normalised distance transform: [D, H, W] int labels -> [D, H, W] float32.

  Inside each instance: the Euclidean distance to the nearest voxel outside it (the
  volume edge does not count as outside), divided by its maximum, so 1 at the
  instance's centre and small at its edge; computed per z-slice when in_plane (then
  normalised per slice) or in 3D. Background voxels get `background` (-1), the range of
  a tanh output.
  """
  compact, _ = fastremap.renumber(check_label_volume(labels), in_place=False)
  out = np.full(compact.shape, background, np.float32)
  for index, box in enumerate(ndimage.find_objects(compact)):
    if box is None:
      continue
    # Grow the box by one voxel (inside the volume) so the outside is seen.
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    inside = compact[box] == index + 1
    if in_plane:
      dist = np.stack([_normalised_edt(plane) for plane in inside])
    else:
      dist = _normalised_edt(inside)
    out[box] = np.where(inside, dist, out[box])
  return out


def _normalised_edt(inside: np.ndarray) -> np.ndarray:
  if not inside.any():
    return np.zeros(inside.shape, np.float32)
  if inside.all():  # nothing outside in view: a flat 1 (the instance fills the box).
    return np.ones(inside.shape, np.float32)
  dist = ndimage.distance_transform_edt(inside)
  return (dist / dist.max()).astype(np.float32)


def binary_contour_targets(
    labels: np.ndarray,
    contour_width: int = 1,
    with_distance: bool = False,
) -> np.ndarray:
  """MitoEM-style targets: [D, H, W] int labels -> [D, H, W, 2 or 3] float32.

  Channel 0: foreground (label != 0). Channel 1: in-plane instance contours of the
  given width (`instance_boundaries`, both sides of every edge). Channel 2 (with
  `with_distance`): `instance_distance_target` in [-1, 1] for a tanh output.
  """
  labels = check_label_volume(labels)
  channels = [labels != 0, instance_boundaries(labels, contour_width, in_plane=True)]
  if with_distance:
    channels.append(instance_distance_target(labels, in_plane=True))
  return np.stack(channels, axis=-1).astype(np.float32)
