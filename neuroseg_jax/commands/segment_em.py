"""`neuroseg-jax segment-em`: a serial-section EM volume -> cells per slice and boundary map.

Written to the output folder:
  labels.tif         uint32 [D, H, W] BigTIFF, one page per z: cells of each slice
                     (seeded watershed of the boundary map with the model's tuned
                     parameters), ids unique over the whole stack, every pixel labeled
  boundary.tif       uint8 [D, H, W] BigTIFF: round(255 * boundary probability)
  segmentation.json  input, shape, model and its watershed parameters, cells per slice,
                     the Gaussian blur (px) that matched each slice's noise to the
                     training slices' (0 = as stored), seconds; with --labels also
                     the per-slice and mean adapted Rand error and VOI split / merge
                     against them
The volume is streamed in slabs of `slab` z-slices: each slab is read, predicted
(sliding windows), segmented and appended to both TIFFs, so host memory is bounded
by one slab whatever the depth. Values are standardised by the intensity stats of
the whole volume (`intensity.intensity_stats`: 3 sampled slices), as in training.
The TIFFs appear only once complete (`atomic_files.atomic_path`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import tifffile

from neuroseg_jax import em_predictor
from neuroseg_jax.data import atomic_files
from neuroseg_jax.data import em_labels
from neuroseg_jax.data import em_volumes
from neuroseg_jax.data import intensity
from neuroseg_jax.errors import ConfigError, DataError
from neuroseg_jax.evaluation import slice_segmentation

LABELS, BOUNDARY, SUMMARY = "labels.tif", "boundary.tif", "segmentation.json"
MAX_ID = 2**32 - 1  # labels.tif is uint32
VOXEL_SIZE_TOLERANCE = 0.25  # relative in-plane difference from the model's that is warned about


def _check_voxel_size(path, key, model: em_predictor.EMBoundaryModel):
  """The input's (z, y, x) nm when recorded; warns when its pixels differ from the model's."""
  try:
    size = em_volumes.read_voxel_size(path, key)
  except DataError as e:  # a malformed attribute does not stop segmentation
    logging.warning("%s", e)
    return None
  if size and model.voxel_size:
    ratio = max(abs(a / b - 1.0) for a, b in zip(size[1:], model.voxel_size[1:]))
    if ratio > VOXEL_SIZE_TOLERANCE:
      logging.warning("%s: %g x %g nm pixels, the model was trained on %g x %g nm; rescale the "
                      "volume for better results", path, size[1], size[2], *model.voxel_size[1:])
  return size


def segment_em(input_path: str, model_dir: str, out: str, slab: int = 8, key: str | None = None,
               labels: str | None = None, labels_kind: str = "auto",
               labels_key: str | None = None, progress: bool = True) -> dict:
  """Segments the volume at `input_path` slab by slab into `out`; returns the summary
  that `out`/segmentation.json holds."""
  start = time.time()
  if not Path(input_path).exists():
    raise DataError(input_path, "no such file or folder")
  if slab < 1:
    raise ConfigError(f"--slab must be at least 1, got {slab}")
  model = em_predictor.load_em_model(model_dir)
  volume = em_volumes.open_volume(input_path, key)
  truth = None
  if labels:
    truth = em_labels.open_labels(labels, labels_kind, labels_key)
    em_volumes.check_aligned(volume, truth)
  voxel_size = _check_voxel_size(input_path, key, model)
  stats = intensity.intensity_stats(volume)
  os.makedirs(out, exist_ok=True)
  depth = volume.shape[0]
  counts: list[int] = []
  blur_sigmas: list[float] = []
  per_slice = {name: [] for name in slice_segmentation.SCORE_NAMES}
  offset = 0
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  with atomic_files.atomic_path(os.path.join(out, LABELS)) as labels_tmp, \
       atomic_files.atomic_path(os.path.join(out, BOUNDARY)) as boundary_tmp, \
       tifffile.TiffWriter(labels_tmp, bigtiff=True) as labels_tif, \
       tifffile.TiffWriter(boundary_tmp, bigtiff=True) as boundary_tif:
    for z0 in tqdm(range(0, depth, slab), unit="slab", disable=not progress):
      block = np.asarray(volume[z0:min(z0 + slab, depth)])  # [s, H, W]
      boundary = model.boundary(block, stats, blur_sigmas)
      cells = model.segment(boundary).astype(np.uint64) + np.uint64(offset)
      if int(cells.max()) > MAX_ID:
        raise DataError(input_path, f"more than {MAX_ID} cells: they do not fit uint32 labels")
      offset = int(cells.max())
      cells = cells.astype(np.uint32)
      for z in range(len(block)):
        counts.append(len(np.unique(cells[z])))
        labels_tif.write(cells[z], contiguous=True)
        boundary_tif.write(np.round(255 * np.clip(boundary[z], 0, 1)).astype(np.uint8),
                           contiguous=True)
      if truth is not None:
        scores = slice_segmentation.slice_scores(np.asarray(truth[z0:z0 + len(block)]), cells)
        for name, values in scores.items():
          per_slice[name] += values.tolist()
  summary = {"input": os.path.abspath(input_path), "key": key, "shape": list(volume.shape),
             "voxel_size": list(voxel_size) if voxel_size else None,
             **model.describe(), "model": os.path.abspath(model_dir), "slab": slab,
             "instances_per_slice": counts, "instances": int(sum(counts)),
             "noise_blur_per_slice": blur_sigmas if model.noise_level else None,
             "files": [LABELS, BOUNDARY], "seconds": round(time.time() - start, 2)}
  if truth is not None:
    summary.update({"labels": os.path.abspath(labels), "scores_per_slice": per_slice,
                    "scores": {name: float(np.mean(values)) for name, values in per_slice.items()}})
  with atomic_files.atomic_write(os.path.join(out, SUMMARY), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
