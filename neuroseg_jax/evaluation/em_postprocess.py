"""Network outputs -> instance labels with the field's maintained libraries (host side).

Inputs are channels-last probability volumes (after the sigmoid):
  affinities [D, H, W, K], channel k linking voxel p with p + offsets[k] (conventions
    of `neuroseg_jax.data.affinities`; waterz uses the first three channels, which
    must be the nearest-neighbour offsets (-1,0,0), (0,-1,0), (0,0,-1));
  binary + contour [D, H, W, >=2] (channel 0 foreground, 1 contour), MitoEM style;
  boundary [D, H, W] or [D, H, W, 1].
Outputs are [D, H, W] uint32 labels, 0 = background, instances numbered 1..N.

`POSTPROCESSORS` maps names to functions `(prediction, **options) -> labels`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Sequence

import cc3d
import fastremap
import mwatershed
import numpy as np
import skimage.segmentation
import waterz

from neuroseg_jax.data.affinities import NEAREST_NEIGHBOUR_OFFSETS
from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry

POSTPROCESSORS: Registry = Registry("post-processor")

# waterz's "aff50_his256": merge score = 1 - median affinity on the boundary between two
# regions, read from a 256-bin histogram (compiled ahead of time in the waterz wheel).
WATERZ_MEDIAN_SCORE = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>"


def _channels_last(prediction: np.ndarray, min_channels: int, what: str) -> np.ndarray:
  prediction = np.asarray(prediction)
  if prediction.ndim != 4 or prediction.shape[-1] < min_channels:
    raise DataError(what, f"expected [D, H, W, C>={min_channels}] probabilities, "
                    f"got shape {prediction.shape}")
  return prediction


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
  """[D, H, W] int labels -> [D, H, W] uint32 with ids 1..N (order of first appearance), 0 kept."""
  renumbered, _ = fastremap.renumber(np.asarray(labels), preserve_zero=True, in_place=False)
  return renumbered.astype(np.uint32, copy=False)


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
  """Sets instances with fewer than min_size voxels to 0: [D, H, W] -> same shape and dtype."""
  if min_size <= 1:
    return labels
  ids, counts = fastremap.unique(labels, return_counts=True)
  small = ids[(counts < min_size) & (ids != 0)]
  return fastremap.mask(labels, small, in_place=False) if len(small) else labels


def connected_components(mask: np.ndarray, connectivity: int = 26, min_size: int = 0) -> np.ndarray:
  """[D, H, W] bool (or labels: components per value) -> [D, H, W] uint32 components 1..N."""
  labels = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=connectivity,
                                     out_dtype=np.uint32)
  return relabel_sequential(remove_small_instances(labels, min_size))


class _StdoutSilencer:
  """Silences waterz's progress prints (Python's and C++'s, file descriptor 1) while any
  thread is inside `silenced()`. Thread-safe: the first thread in points fd 1 and
  sys.stdout at /dev/null, the last one out restores both. (Each thread saving and
  restoring them on its own, as `tune_watershed`'s threads would, restores another
  thread's /dev/null and leaves the process without stdout.)"""

  def __init__(self):
    self._lock = threading.Lock()
    self._inside = 0
    self._saved: tuple = ()

  @contextlib.contextmanager
  def silenced(self):
    with self._lock:
      if not self._inside:
        sys.stdout.flush()
        devnull = open(os.devnull, "w")
        self._saved = (os.dup(1), sys.stdout, devnull)
        os.dup2(devnull.fileno(), 1)
        sys.stdout = devnull
      self._inside += 1
    try:
      yield
    finally:
      with self._lock:
        self._inside -= 1
        if not self._inside:
          saved_fd, sys.stdout, devnull = self._saved
          os.dup2(saved_fd, 1)
          os.close(saved_fd)
          devnull.close()


_STDOUT = _StdoutSilencer()


def waterz_segmentations(affinities: np.ndarray, thresholds: Sequence[float], *,
                         scoring_function: str = WATERZ_MEDIAN_SCORE,
                         fragment_low: float = 1e-4, fragment_high: float = 0.9999,
                         min_size: int = 0) -> Iterator[tuple[float, np.ndarray]]:
  """Watershed fragments + hierarchical agglomeration (waterz), one result per threshold.

  Args:
    affinities: [D, H, W, K>=3] probabilities, first 3 channels nearest-neighbour.
    thresholds: merge-score thresholds (ascending merges more; regions merge while their
      score, 1 - median boundary affinity by default, is below the threshold).
    scoring_function: a waterz C++ scoring type (the default is compiled in the wheel).
    fragment_low, fragment_high: waterz's affinity thresholds for the initial
      watershed (voxels whose affinities are all <= low stay background 0).
    min_size: instances below this many voxels become background.

  Yields:
    (threshold, [D, H, W] uint32 labels), thresholds in ascending order.
  """
  affinities = _channels_last(affinities, 3, "affinities")
  affs = np.ascontiguousarray(np.moveaxis(affinities[..., :3], -1, 0), dtype=np.float32)
  thresholds = sorted(float(t) for t in thresholds)
  results = waterz.agglomerate(affs, thresholds, aff_threshold_low=fragment_low,
                               aff_threshold_high=fragment_high,
                               scoring_function=scoring_function)
  for threshold in thresholds:
    with _STDOUT.silenced():
      labels = next(results)
    # waterz reuses one buffer for all thresholds: copy while relabelling.
    yield threshold, relabel_sequential(remove_small_instances(labels, min_size))


@POSTPROCESSORS.register("waterz")
def waterz_segmentation(affinities: np.ndarray, threshold: float = 0.5, **options) -> np.ndarray:
  """[D, H, W, K>=3] affinities -> [D, H, W] uint32 labels at one waterz threshold."""
  (_, labels), = waterz_segmentations(affinities, [threshold], **options)
  return labels


@POSTPROCESSORS.register("mutex_watershed")
def mutex_watershed(affinities: np.ndarray,
                    offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
                    bias: float = 0.5, min_size: int = 0) -> np.ndarray:
  """Mutex watershed (mwatershed): [D, H, W, K] affinities -> [D, H, W] uint32 labels.

  Edge weights are affinity - bias: above the bias attract, below repel; `offsets[k]`
  must be channel k's offset (long-range offsets add repulsive constraints).
  """
  affinities = _channels_last(affinities, len(offsets), "affinities")
  weights = np.moveaxis(affinities[..., :len(offsets)], -1, 0).astype(np.float64) - bias
  labels = mwatershed.agglom(np.ascontiguousarray(weights), [list(o) for o in offsets])
  return relabel_sequential(remove_small_instances(labels, min_size))


def seeded_watershed(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None,
                     *, min_seed_size: int = 0, min_size: int = 0) -> np.ndarray:
  """Floods `elevation` ([D, H, W], low first) from the connected components of `seeds`
  ([D, H, W] bool) inside `mask` ([D, H, W] bool or None) -> [D, H, W] uint32 labels."""
  markers = connected_components(seeds, connectivity=6, min_size=min_seed_size)
  labels = skimage.segmentation.watershed(elevation, markers=markers, mask=mask)
  return relabel_sequential(remove_small_instances(labels, min_size))


@POSTPROCESSORS.register("binary_contour_watershed")
def binary_contour_watershed(prediction: np.ndarray, *, seed_foreground: float = 0.9,
                             seed_contour: float = 0.8, foreground: float = 0.85,
                             min_seed_size: int = 32, min_size: int = 128) -> np.ndarray:
  """MitoEM binary + contour -> instances: [D, H, W, >=2] probabilities -> [D, H, W] uint32.

  Seeds: confident interior (foreground > seed_foreground and contour < seed_contour),
  one per 6-connected component of at least min_seed_size voxels. They flood
  1 - foreground * (1 - contour) (low inside, high at contours) within
  foreground > `foreground`; instances below min_size voxels are dropped.
  """
  prediction = _channels_last(prediction, 2, "binary + contour prediction")
  fg, contour = prediction[..., 0], prediction[..., 1]
  seeds = (fg > seed_foreground) & (contour < seed_contour)
  return seeded_watershed(1.0 - fg * (1.0 - contour), seeds, fg > foreground,
                          min_seed_size=min_seed_size, min_size=min_size)


@POSTPROCESSORS.register("boundary_watershed")
def boundary_watershed(boundary: np.ndarray, *, seed_threshold: float = 0.1,
                       mask_threshold: float | None = None, min_seed_size: int = 32,
                       min_size: int = 0) -> np.ndarray:
  """Boundary probabilities [D, H, W] or [D, H, W, 1] -> [D, H, W] uint32 instances.

  Seeds are components of boundary < seed_threshold; they flood the boundary map,
  everywhere or only where boundary < mask_threshold (then the rest is background).
  """
  boundary = np.asarray(boundary)
  if boundary.ndim == 4 and boundary.shape[-1] == 1:
    boundary = boundary[..., 0]
  if boundary.ndim != 3:
    raise DataError("boundary prediction", f"expected [D, H, W(, 1)], got shape {boundary.shape}")
  mask = None if mask_threshold is None else boundary < mask_threshold
  return seeded_watershed(boundary, boundary < seed_threshold, mask,
                          min_seed_size=min_seed_size, min_size=min_size)


@POSTPROCESSORS.register("connected_components")
def foreground_components(prediction: np.ndarray, *, threshold: float = 0.5,
                          connectivity: int = 26, min_size: int = 0) -> np.ndarray:
  """Foreground probability [D, H, W, >=1] (channel 0) -> [D, H, W] uint32 3D components."""
  prediction = _channels_last(prediction, 1, "foreground prediction")
  return connected_components(prediction[..., 0] > threshold, connectivity, min_size)
