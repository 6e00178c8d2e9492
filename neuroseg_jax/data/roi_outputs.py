"""Files of a segmentation result: label image, ROI table, traces.

ROI i of masks [N, H, W] has id i + 1 everywhere: its value in the label image,
its row of the table, its column of the trace CSV and its row of the [N, T]
trace arrays. Every file is written atomically (`atomic_files.atomic_write`), so
a crash never leaves a half-written file under the final name.

  write_label_image  PATH.tif: [H, W] uint16, 0 = background. Where ROIs overlap
                     the higher-score one keeps the pixel, so every ROI keeps at
                     least the pixels it shares with none (an ROI covered
                     entirely by higher-score ones vanishes from the image only).
  write_roi_table    PATH.csv: id,centroid_y,centroid_x,area,score,mean_intensity,
                     one row per ROI, centroid (row, column) and area (pixels) of
                     its full mask as the traces use it, not of the label image.
  write_traces       STEM_traces.npz: raw, neuropil, corrected, baseline, dff
                     [N, T] float32 and neuropil_coefficient; STEM_traces.csv: wide
                     dF/F, one row per frame: frame[,time_s],roi1_dff,...,roiN_dff
                     (wide rather than long: T rows instead of N * T, and what a
                     spreadsheet plots; the other traces are in the .npz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from neuroseg_jax.data.atomic_files import atomic_write
from neuroseg_jax.data.traces import Traces, as_masks

_CSV_ROWS_PER_WRITE = 1000  # trace CSV rows formatted at a time.


def _checked(masks, scores) -> tuple[np.ndarray, np.ndarray]:
  """(masks [N, H, W] bool, scores [N] float) or a ValueError on mismatch."""
  masks = as_masks(masks)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(scores) != len(masks):
    raise ValueError(f"{len(masks)} masks but {len(scores)} scores")
  return masks, scores


def label_image(masks, scores) -> np.ndarray:
  """Masks [N, H, W] and scores [N] -> [H, W] uint16 labels (ROI i -> i + 1),
  overlaps going to the higher score (ties to the later ROI)."""
  masks, scores = _checked(masks, scores)
  if len(masks) > np.iinfo(np.uint16).max:
    raise ValueError(f"{len(masks)} ROIs do not fit in a uint16 label image")
  labels = np.zeros(masks.shape[1:], np.uint16)
  for i in np.argsort(scores, kind="stable"):  # higher scores paint last.
    labels[masks[i]] = i + 1
  return labels


def write_label_image(path, masks, scores) -> np.ndarray:
  """Writes `label_image(masks, scores)` as a uint16 TIFF [H, W]; returns it."""
  labels = label_image(masks, scores)
  with atomic_write(path) as file:
    tifffile.imwrite(file, labels, photometric="minisblack")
  return labels


def write_roi_table(path, masks, scores, mean_intensity) -> None:
  """Writes the ROI table CSV (columns in the module docstring)."""
  masks, scores = _checked(masks, scores)
  mean_intensity = np.asarray(mean_intensity, np.float64).reshape(-1)
  if len(mean_intensity) != len(masks):
    raise ValueError(f"{len(masks)} masks but {len(mean_intensity)} mean intensities")
  with atomic_write(path, "w") as file:
    file.write("id,centroid_y,centroid_x,area,score,mean_intensity\n")
    for i, (mask, score, intensity) in enumerate(zip(masks, scores, mean_intensity)):
      rows, cols = np.nonzero(mask)
      file.write(f"{i + 1},{rows.mean():.3f},{cols.mean():.3f},{len(rows)},{score:.6g},"
                 f"{intensity:.6g}\n")


def write_traces(path_stem, traces: Traces, frame_rate: float | None = None) -> tuple[Path, Path]:
  """Writes STEM_traces.npz and STEM_traces.csv (module docstring); a time_s column
  is added when `frame_rate` (Hz) is given. Returns the two paths."""
  stem = Path(path_stem)
  npz_path = stem.with_name(f"{stem.name}_traces.npz")
  csv_path = stem.with_name(f"{stem.name}_traces.csv")
  with atomic_write(npz_path) as file:
    np.savez(file, raw=traces.raw, neuropil=traces.neuropil, corrected=traces.corrected,
             baseline=traces.baseline, dff=traces.dff,
             neuropil_coefficient=np.float32(traces.neuropil_coefficient))
  num_rois, num_frames = traces.dff.shape
  time_columns = ["frame"] + (["time_s"] if frame_rate else [])
  formats = ["%d"] + (["%.6f"] if frame_rate else []) + ["%.6g"] * num_rois
  with atomic_write(csv_path, "w") as file:
    file.write(",".join(time_columns + [f"roi{i + 1}_dff" for i in range(num_rois)]) + "\n")
    for start in range(0, num_frames, _CSV_ROWS_PER_WRITE):
      frames = np.arange(start, min(start + _CSV_ROWS_PER_WRITE, num_frames))
      times = [frames / frame_rate] if frame_rate else []
      rows = np.column_stack([frames, *times, traces.dff[:, frames].T])
      np.savetxt(file, rows, fmt=formats, delimiter=",")
  return npz_path, csv_path
