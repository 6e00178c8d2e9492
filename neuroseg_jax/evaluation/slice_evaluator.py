"""Scores a boundary network on held-out EM slices, with post-processing tuned on training ones.

`SliceEvaluator.run(predict_fn)`:
  1. sliding-window boundary probabilities for the training and validation slices
     (`sliding_window_predict`, windows [1, h, w], Gaussian blending, reflect padding,
     optional 4-flip test-time augmentation), each slice first blurred to the training
     slices' noise level when `noise_target` is given (`noise_matching.match_slices`);
  2. the watershed parameters of lowest mean adapted Rand error on the tuning slices
     (`slice_segmentation.tune_watershed`): the training slices, or labeled slices
     held out from training (eval.tune_slices), on which the network's maps look as
     on new data;
  3. per-slice adapted Rand error and VOI split / merge on the validation slices with
     those parameters: val/arand, val/voi_split, val/voi_merge (means over slices).
Also reported, never used for model selection: train/arand (the tuning slices at
the chosen parameters) and val/arand_oracle (parameters tuned on the validation
slices themselves: how much a better choice of post-processing could still give).
A JSON file with the chosen parameters and per-slice scores is written for the
commands and studies that read them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence

import numpy as np

from neuroseg_jax.data import atomic_files, noise_matching
from neuroseg_jax.evaluation import slice_segmentation as slices
from neuroseg_jax.evaluation.sliding_window import sliding_window_predict


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  window: tuple[int, int]          # (h, w) = the training crop
  stride: tuple[int, int]          # (h, w) step between windows
  padding: tuple[int, int] = ()    # reflect padding per side; () = a quarter window
  batch_size: int = 8
  flips: bool = False              # average the 4 in-plane flips

  def predict(self, predict_fn, volume) -> np.ndarray:
    """[D, H, W] stored values (array or lazy volume) -> [D, H, W] float32 boundary map."""
    padding = tuple(self.padding) or tuple(w // 4 for w in self.window)
    out = sliding_window_predict(volume, lambda windows: np.asarray(predict_fn({"image": windows})),
                                 (1, *self.window), (1, *self.stride), num_outputs=1,
                                 padding=(0, *padding), batch_size=self.batch_size,
                                 flip_axes=(1, 2) if self.flips else ())
    return np.asarray(out[..., 0])


def boundary_maps(images: np.ndarray, predict_fn, inference: InferenceSettings,
                  noise_target: float | None = None) -> tuple[np.ndarray, list[float]]:
  """[N, H, W] stored slices -> ([N, H, W] float32 boundary maps, the blur sigma of each
  slice): each slice noisier than `noise_target` blurred to it first (None: as stored)."""
  blur_sigmas = [0.0] * len(images)
  if noise_target:
    images, blur_sigmas = noise_matching.match_slices(images, noise_target)
  return inference.predict(predict_fn, images), blur_sigmas


class SliceEvaluator:
  """See module doc. images, labels: [D, H, W] volumes; *_index: z-slices."""

  def __init__(self, images, labels, tune_index: Sequence[int], val_index: Sequence[int],
               inference: InferenceSettings, grid: slices.WatershedGrid, json_path: str,
               noise_target: float | None = None):
    self.images, self.labels = images, labels
    self.tune_index, self.val_index = list(tune_index), list(val_index)
    self.inference, self.grid, self.json_path = inference, grid, json_path
    self.noise_target = noise_target

  def _stack(self, volume, index) -> np.ndarray:
    return np.stack([np.asarray(volume[z]) for z in index])

  def run(self, predict_fn) -> Iterable[tuple[str, float]]:
    index = self.tune_index + self.val_index
    boundary, blur_sigmas = boundary_maps(self._stack(self.images, index), predict_fn,
                                          self.inference, self.noise_target)
    gt = self._stack(self.labels, index)
    n = len(self.tune_index)
    params, table = slices.tune_watershed(boundary[:n], gt[:n], self.grid)
    scores = slices.slice_scores(gt[n:], slices.watershed_slices(boundary[n:], params))
    oracle, oracle_table = slices.tune_watershed(boundary[n:], gt[n:], self.grid)
    means = slices.mean_scores(scores)
    with atomic_files.atomic_write(self.json_path, "w") as file:
      json.dump({
          "watershed": dataclasses.asdict(params), "train_arand": table[params],
          "tune_slices": self.tune_index, "noise_target": self.noise_target,
          "blur_sigmas": dict(zip(map(str, index), blur_sigmas)),
          "val_slices": self.val_index, "val": {k: v.tolist() for k, v in scores.items()},
          "val_mean": means, "val_arand_oracle": oracle_table[oracle],
          "oracle_watershed": dataclasses.asdict(oracle)}, file, indent=1)
    for name, value in means.items():
      yield f"val/{name}", value
    yield "train/arand", table[params]
    yield "val/arand_oracle", oracle_table[oracle]
    yield "val/seed_threshold", params.seed_threshold
    yield "val/min_seed_size", float(params.min_seed_size)
    yield "val/smoothing", params.smoothing
    yield "val/merge_threshold", params.merge_threshold
