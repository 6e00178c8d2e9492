"""Per-slice instance segmentation of serial-section EM and its scores (host side).

With 50 nm sections and 4 nm pixels, cells are segmented slice by slice: a boundary
map [D, H, W] (1 = membrane) becomes instances in each slice by a seeded watershed
(`watershed_slices`): the map is smoothed by a Gaussian of `smoothing` px, the seed
mask `smoothed < seed_threshold` (or, with `seed_quantile` > 0, below that quantile of
the slice's smoothed values: a share of the slice rather than a probability, which does
not depend on how the network is calibrated; on ISBI 2012 it did not choose better,
docs/RESULTS.md) is eroded by `seed_erosion` px (kept where its
Euclidean distance to the mask's outside exceeds it: a thin bridge through a gap in
a faint membrane breaks, so two cells do not share one seed), seeds are its
4-connected components with at least `min_seed_size` px, and the watershed floods
every pixel of the slice from them (membranes included; they are ignored when
scoring). With `merge_threshold` > 0 the slice is agglomerated instead
(`agglomerate`): waterz cuts the smoothed map into fine fragments and merges
neighbours, lowest score first, while the score of their shared edge, the median
boundary along it, is below the threshold (the seed fields are then unused and
tuned as 0); pixels left unassigned join the nearest region by a watershed of the
map. Linking z is left out on purpose: on ISBI 2012 z-links through misaligned
sections merged cells (issue 15).

Scores are per slice and then averaged, as in the ISBI 2012 challenge: the ground
truth is the 4-connected components of the cell interior, membrane (label 0) is
ignored (`em_metrics.adapted_rand`, `variation_of_information`).

`tune_watershed` picks the parameters with the lowest mean adapted Rand error on
the slices it is given: the training slices, never the slices being scored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
from typing import Iterable, Iterator, Sequence

import cc3d
import numpy as np
import skimage.segmentation
from scipy import ndimage

from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_metrics
from neuroseg_jax.evaluation.em_postprocess import (relabel_sequential, remove_small_instances,
                                                    waterz_segmentations)

SCORE_NAMES = ("arand", "voi_split", "voi_merge")


@dataclasses.dataclass(frozen=True)
class WatershedParams:
  seed_threshold: float = 0.3  # seeds: smoothed boundary below this
  min_seed_size: int = 16      # px; smaller seeds are dropped
  smoothing: float = 1.0       # Gaussian sigma (px) applied to the boundary map first
  seed_erosion: float = 0.0    # px; the seed mask keeps points farther than this from its edge
  merge_threshold: float = 0.0  # > 0: agglomerate while an edge's median boundary is below
  seed_quantile: float = 0.0   # > 0: per slice, the seed threshold is this quantile of the
                               # smoothed map (seed_threshold unused, stored as 0)


@dataclasses.dataclass(frozen=True)
class WatershedGrid:
  """The parameter values `tune_watershed` tries (every combination)."""
  seed_threshold: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
  min_seed_size: Sequence[int] = (4, 16, 64)
  smoothing: Sequence[float] = (0.0, 1.0, 2.0)
  seed_erosion: Sequence[float] = (0.0, 2.0, 4.0)
  merge_threshold: Sequence[float] = (0.0,)  # 0 = the seeded watershed; > 0 agglomeration
  seed_quantile: Sequence[float] = ()  # seeded watersheds thresholded at per-slice quantiles

  def seed_levels(self) -> list[WatershedParams]:
    """One params per seed threshold, absolute ones first, then quantiles (the other
    fields 0), if 0 is a merge threshold (seeded watersheds are tried); else none."""
    if 0 not in self.merge_threshold:
      return []
    return ([WatershedParams(t, 0, 0.0, 0.0) for t in self.seed_threshold]
            + [WatershedParams(0.0, 0, 0.0, 0.0, seed_quantile=q) for q in self.seed_quantile])

  def __iter__(self) -> Iterable[WatershedParams]:
    """Every seeded-watershed combination (seed levels x erosion x seed size per
    smoothing), then every (smoothing, merge threshold > 0) with the seed fields 0."""
    for s, level, e, m in itertools.product(self.smoothing, self.seed_levels(),
                                            self.seed_erosion, self.min_seed_size):
      yield dataclasses.replace(level, min_seed_size=m, smoothing=s, seed_erosion=e)
    for s, g in itertools.product(self.smoothing, [g for g in self.merge_threshold if g > 0]):
      yield WatershedParams(0.0, 0, s, 0.0, g)


def _check_stack(array, what: str) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim == 4 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 3:
    raise DataError(what, f"expected [D, H, W], got shape {array.shape}")
  return array


def seed_distance(elevation: np.ndarray, seed_threshold: float) -> np.ndarray:
  """[H, W] Euclidean distance of each point of the seed mask (elevation < threshold) to
  the mask's outside; 0 outside. `> seed_erosion` is the eroded mask."""
  return ndimage.distance_transform_edt(elevation < seed_threshold)


def slice_seed_threshold(elevation: np.ndarray, params: WatershedParams) -> float:
  """The seed threshold of one smoothed slice [H, W]: params.seed_threshold, or the
  params.seed_quantile quantile of the slice's values."""
  if params.seed_quantile > 0:
    return float(np.quantile(elevation, params.seed_quantile))
  return params.seed_threshold


def watershed_from_seed_mask(elevation: np.ndarray, seed_mask: np.ndarray,
                             min_seed_size: int) -> np.ndarray:
  """Floods one smoothed boundary slice [H, W] from the 4-connected components of
  `seed_mask` [H, W] with >= min_seed_size px -> [H, W] uint32 instances, every pixel labeled."""
  seeds = cc3d.connected_components(np.ascontiguousarray(seed_mask), connectivity=4,
                                    out_dtype=np.uint32)
  seeds = relabel_sequential(remove_small_instances(seeds, min_seed_size))
  if seeds.max() == 0:
    return np.ones(elevation.shape, np.uint32)  # no seed: the slice is one segment
  return skimage.segmentation.watershed(elevation, markers=seeds).astype(np.uint32)


def smooth(boundary_slice: np.ndarray, sigma: float) -> np.ndarray:
  """[H, W] -> [H, W] float32 Gaussian-smoothed (sigma in px; 0 = unchanged)."""
  boundary_slice = np.asarray(boundary_slice, np.float32)
  return ndimage.gaussian_filter(boundary_slice, sigma) if sigma > 0 else boundary_slice


def agglomerate(elevation: np.ndarray, thresholds: Sequence[float]
                ) -> Iterator[tuple[float, np.ndarray]]:
  """One smoothed boundary slice [H, W] -> (threshold, [H, W] uint32 cells, every pixel
  labeled) per merge threshold > 0, ascending (waterz fragments + median agglomeration)."""
  boundary = np.clip(np.asarray(elevation, np.float32), 0.0, 1.0)
  affinities = np.zeros((1, *boundary.shape, 3), np.float32)  # to the previous z, y, x pixel
  affinities[0, 1:, :, 1] = 1.0 - np.maximum(boundary[1:], boundary[:-1])
  affinities[0, :, 1:, 2] = 1.0 - np.maximum(boundary[:, 1:], boundary[:, :-1])
  for threshold, labels in waterz_segmentations(affinities, thresholds):
    if labels.max() == 0:
      yield threshold, np.ones(boundary.shape, np.uint32)
    else:
      yield threshold, skimage.segmentation.watershed(boundary, markers=labels[0]).astype(
          np.uint32)


def watershed_slices(boundary, params: WatershedParams = WatershedParams()) -> np.ndarray:
  """Boundary probabilities [D, H, W] -> [D, H, W] uint32 instances, ids unique over
  the stack (slice z's instances follow those of slices < z)."""
  boundary = _check_stack(boundary, "boundary map")
  out = np.empty(boundary.shape, np.uint32)
  offset = 0
  for z in range(boundary.shape[0]):
    elevation = smooth(boundary[z], params.smoothing)
    if params.merge_threshold > 0:
      labels = next(agglomerate(elevation, [params.merge_threshold]))[1]
    else:
      seed_mask = seed_distance(elevation, slice_seed_threshold(elevation, params)
                                ) > params.seed_erosion
      labels = watershed_from_seed_mask(elevation, seed_mask, params.min_seed_size)
    out[z] = labels + np.uint32(offset)
    offset += int(labels.max())
  return out


def slice_scores(gt, seg) -> dict[str, np.ndarray]:
  """gt, seg [D, H, W] (gt 0 = membrane, ignored) -> {score name: [D] per-slice values}."""
  gt, seg = _check_stack(gt, "ground truth"), _check_stack(seg, "segmentation")
  if gt.shape != seg.shape:
    raise DataError("segmentation", f"shape {seg.shape} differs from the ground truth's {gt.shape}")
  scores = {name: np.zeros(gt.shape[0]) for name in SCORE_NAMES}
  for z in range(gt.shape[0]):
    table = em_metrics.overlap(gt[z], seg[z])
    values = {**em_metrics.adapted_rand(gt[z], seg[z], table),
              **em_metrics.variation_of_information(gt[z], seg[z], table)}
    for name in SCORE_NAMES:
      scores[name][z] = values[name]
  return scores


def mean_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
  return {name: float(np.mean(values)) for name, values in scores.items()}


def _slice_table(boundary_slice: np.ndarray, gt_slice: np.ndarray, grid: WatershedGrid
                 ) -> dict[WatershedParams, float]:
  """{params: adapted Rand error} of one [H, W] slice for every combination of `grid`.
  The slice is smoothed once per smoothing value and its seed distances computed once per
  threshold or quantile."""
  merges = [t for t in grid.merge_threshold if t > 0]
  table: dict[WatershedParams, float] = {}
  for sigma in grid.smoothing:
    elevation = smooth(boundary_slice, sigma)
    for level in grid.seed_levels():
      distance = seed_distance(elevation, slice_seed_threshold(elevation, level))
      for erosion, min_seed in itertools.product(grid.seed_erosion, grid.min_seed_size):
        seg = watershed_from_seed_mask(elevation, distance > erosion, min_seed)
        params = dataclasses.replace(level, min_seed_size=min_seed, smoothing=sigma,
                                     seed_erosion=erosion)
        table[params] = em_metrics.adapted_rand(gt_slice, seg)["arand"]
    for merge, seg in agglomerate(elevation, merges) if merges else ():
      table[WatershedParams(0.0, 0, sigma, 0.0, merge)] = em_metrics.adapted_rand(
          gt_slice, seg)["arand"]
  return table


def _available_cores() -> int:
  """Cores this process may run on (os.cpu_count() where the OS cannot say, as on macOS)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def slice_tables(boundary, gt, grid: WatershedGrid = WatershedGrid()
                 ) -> list[dict[WatershedParams, float]]:
  """Per slice of boundary, gt [D, H, W]: {params: adapted Rand error} for every
  combination of `grid`. Slices are scored independently, one thread per available core
  (the watershed, filters and scores release the GIL: 1.9x on 2 cores); the result does
  not depend on the number of threads."""
  boundary, gt = _check_stack(boundary, "boundary map"), _check_stack(gt, "ground truth")
  threads = min(_available_cores(), boundary.shape[0])
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(_slice_table, boundary, gt, [grid] * boundary.shape[0]))


def mean_table(tables: list[dict[WatershedParams, float]]) -> dict[WatershedParams, float]:
  """{params: mean over the slices' tables}."""
  return {params: float(np.mean([table[params] for table in tables])) for params in tables[0]}


def tune_watershed(boundary, gt, grid: WatershedGrid = WatershedGrid()
                   ) -> tuple[WatershedParams, dict[WatershedParams, float]]:
  """(the grid's params of lowest mean adapted Rand error on these slices [D, H, W],
  {params: mean arand})."""
  means = mean_table(slice_tables(boundary, gt, grid))
  return min(means, key=means.get), means
