"""`neuroseg-jax segment`: recordings or summary images -> neurons, their outlines and traces.

Per input NAME, written to the output folder:
  NAME_masks.tif     uint16 [H, W] instance labels (0 = background; overlaps go to
                     the higher-scoring neuron)
  NAME_rois.csv      id, centroid, area, score, mean intensity
  NAME_overlay.png   numbered outlines on the summary image
  NAME_summary.tif   float32 [C, H, W] summary images used (C named in its description)
for movies also
  NAME_traces.npz / NAME_traces.csv   raw, neuropil, corrected F and dF/F per frame
  NAME.nwb           with --nwb: segmentation, traces and summary images in NWB
A movie is streamed: motion is estimated by phase correlation (unless --no-motion),
summary images and traces are computed chunk by chunk, so memory is bounded by
the chunk, not by the recording length.
"""

from __future__ import annotations

from concurrent import futures
import dataclasses
import os
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from neuroseg_jax import predictor
from neuroseg_jax.commands import segment_inputs
from neuroseg_jax.data import atomic_files
from neuroseg_jax.data import images
from neuroseg_jax.data import movie_passes
from neuroseg_jax.data import movies
from neuroseg_jax.data import roi_outputs
from neuroseg_jax.data import summary_images
from neuroseg_jax.data import traces as traces_lib
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.evaluation import yolo_postprocess as post

@dataclasses.dataclass
class Segmented:
  """What one input produced: its name, neuron count, the files written and the
  neurons' masks [N, H, W] bool."""
  name: str
  neurons: int
  files: list[str]
  masks: np.ndarray


def _write_summary(path: str, summary: dict) -> None:
  names = sorted(summary)
  stack = np.stack([np.asarray(summary[n], np.float32) for n in names])
  with atomic_files.atomic_path(path) as temporary:
    tifffile.imwrite(temporary, stack, description=",".join(names))


def _save_overlay(path: str, image: np.ndarray, masks: np.ndarray, title: str) -> None:
  empty = np.zeros((0, *image.shape), bool)
  figures.save_outline_figure(path, image, empty, masks, title, numbered=True)


class _CountedMovie(movies.Movie):
  """A movie whose reads advance a progress bar (the two reads of `movie_passes`)."""

  def __init__(self, movie: movies.Movie, bar):
    self._movie, self._bar = movie, bar
    self.source, self.shape, self.dtype = movie.source, movie.shape, movie.dtype

  def read_native(self, start: int, stop: int) -> np.ndarray:
    frames = self._movie.read_native(start, stop)
    self._bar.update(min(len(frames), self._bar.total - self._bar.n))
    return frames

  def close(self) -> None:
    self._movie.close()


def segment_input(path: Path, out: Path, model: predictor.NeuronModel, projection: str,
                  correct_motion: bool, write_nwb: bool, frame_rate: float,
                  dataset: str | None, tta: bool = False, progress: bool = False,
                  whole_pixel_motion: bool = True) -> Segmented:
  """Segments one input and writes its files; returns what was written."""
  name = path.stem if path.is_file() else path.name
  if not segment_inputs.is_movie(path):
    image = images.read_summary_image(path)
    return _write_segmentation(out / name, model.predict([image], tta=tta)[0], image,
                               {"image": image})
  movie = segment_inputs.open_input_movie(path, dataset)
  # The bar is closed before an error reaches the command line, so the error is its last line.
  with tqdm(total=2 * len(movie), unit="frame", desc=f"{name} (2 reads)", leave=False,
            disable=not progress) as bar, futures.ThreadPoolExecutor(1) as background:
    # The network compiles (2-4 CPU-s) while the first read runs, which keeps the two
    # cores busy only ~1.6 of the time.
    compiled = background.submit(model.warm_up, *movie.shape[1:], tta)
    summary, movie = movie_passes.summarize(_CountedMovie(movie, bar), correct_motion,
                                            whole_pixel_motion)
    compiled.result()
    found = model.predict([summary[projection]], tta=tta)[0]
    # Its files are written while the second read runs.
    written = background.submit(_write_segmentation, out / name, found,
                                summary[projection], summary)
    traces = traces_lib.extract_traces(movie, found.masks,
                                       baseline_window=max(1, round(60 * frame_rate)))
    result = written.result()
  prefix = str(out / name)
  result.files += [str(p) for p in roi_outputs.write_traces(prefix, traces, frame_rate)]
  if write_nwb:
    result.files.append(prefix + ".nwb")
    from neuroseg_jax.data import nwb  # pylint: disable=g-import-not-at-top  (pynwb: ~0.5 s)
    nwb.write_nwb(result.files[-1], result.masks, traces, summary, frame_rate)
  return result


def _write_segmentation(prefix: Path, found: post.Instances, image: np.ndarray,
                        summary: dict) -> Segmented:
  """Writes the label image, ROI table, overlay and summary of the neurons `found` in
  `image` [H, W]."""
  prefix = str(prefix)
  files = [prefix + "_masks.tif", prefix + "_rois.csv", prefix + "_overlay.png",
           prefix + "_summary.tif"]
  intensity = summary.get("mean", image)
  roi_outputs.write_label_image(files[0], found.masks, found.scores)
  roi_outputs.write_roi_table(files[1], found.masks, found.scores,
                              np.array([intensity[m].mean() for m in found.masks], np.float32))
  name = os.path.basename(prefix)
  _save_overlay(files[2], image, found.masks, f"{name}: {len(found)} neurons")
  _write_summary(files[3], summary)
  return Segmented(name, len(found), files, found.masks)


def segment(inputs: list[str], out: str, model_name: str = "builtin", projection: str = "corr",
            correct_motion: bool = True, write_nwb: bool = False, frame_rate: float = 30.0,
            dataset: str | None = None, progress: bool = True,
            tta: bool = False, whole_pixel_motion: bool = True) -> list[Segmented]:
  """Checks every input first (`segment_inputs.check_inputs`), then segments each into
  `out`; returns what was written. Frames are moved back by whole pixels unless
  `whole_pixel_motion` is False (bilinear; `data/movie_passes.py`)."""
  segment_inputs.check_inputs(inputs, dataset)
  paths = [Path(p) for p in inputs]
  if projection not in summary_images.SUMMARY_NAMES:
    raise DataError("--projection", f"unknown summary image {projection!r}; valid choices: "
                    f"{', '.join(summary_images.SUMMARY_NAMES)}")
  model = predictor.load_model(model_name)
  os.makedirs(out, exist_ok=True)
  results = []
  for path in tqdm(paths, unit="input", disable=not progress):
    results.append(segment_input(path, Path(out), model, projection, correct_motion, write_nwb,
                                 frame_rate, dataset, tta, progress, whole_pixel_motion))
  return results


def simulated_recording(out: str, size: int = 256, frames: int = 600,
                        seed: int = 0) -> tuple[str, np.ndarray]:
  """Writes a simulated recording to OUT/simulated_recording.tif; returns (path, true
  masks [N, H, W] of its active cells), for a first run without data of one's own."""
  from neuroseg_jax.data import twophoton_sim  # pylint: disable=g-import-not-at-top  (scipy.signal: ~0.3 s)
  config = twophoton_sim.SimulationConfig(height=size, width=size, frames=frames)
  recording = twophoton_sim.simulate_recording(config, seed)
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "simulated_recording.tif")
  tifffile.imwrite(path, np.clip(recording.movie, 0, 65535).astype(np.uint16))
  return path, recording.masks[recording.active]


def score_against(labels_path: str, true_masks: np.ndarray) -> neuron_matching.Counts:
  """Counts of the instance-label image at `labels_path` against true masks."""
  labels = tifffile.imread(labels_path)
  masks = np.stack([labels == i for i in np.unique(labels) if i]) if labels.any() else \
      np.zeros((0, *labels.shape), bool)
  return neuron_matching.counts_from_iou(neuron_matching.mask_iou_matrix(masks, true_masks))
