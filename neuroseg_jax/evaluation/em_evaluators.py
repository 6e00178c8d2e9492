"""Validation evaluators for 3D EM segmentation: whole-volume inference -> instances -> scores.

Both follow the engine's Evaluator protocol (`run(predict_fn) -> iterable of
(name, value)`). `predict_fn(batch: dict) -> outputs` is the task's jitted inference;
its batch holds the window under `input_key` ([B, d, h, w, C] float32, the volume's
values as stored: normalisation belongs in the task's predict_fn) and its outputs are
PROBABILITIES [B, d, h, w, K] (after the sigmoid), or a dict holding them under
`output_key`.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import numpy as np

from neuroseg_jax.data.affinities import NEAREST_NEIGHBOUR_OFFSETS, check_label_volume
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_metrics, em_postprocess
from neuroseg_jax.evaluation.sliding_window import sliding_window_predict


class VolumeInference:
  """Sliding-window settings plus the volume they run on.

  volume: sliceable [D, H, W] or [D, H, W, C]; window, stride, padding: (z, y, x);
  flip_axes: spatial axes averaged by flip TTA; scratch_dir: if set, predictions go
  to an np.memmap file there (bounded host memory for large volumes).
  """

  def __init__(self, volume, window: Sequence[int], stride: Sequence[int], *,
               padding: Sequence[int] = (0, 0, 0), batch_size: int = 1, blend: str = "gaussian",
               flip_axes: Sequence[int] = (), input_key: str = "image",
               output_key: str | None = None, scratch_dir: str | None = None):
    self.volume, self.window, self.stride, self.padding = volume, window, stride, padding
    self.batch_size, self.blend, self.flip_axes = batch_size, blend, tuple(flip_axes)
    self.input_key, self.output_key, self.scratch_dir = input_key, output_key, scratch_dir

  def _window_fn(self, predict_fn) -> Callable[[np.ndarray], np.ndarray]:
    def predict(windows: np.ndarray) -> np.ndarray:
      outputs = predict_fn({self.input_key: windows})
      return np.asarray(outputs if self.output_key is None else outputs[self.output_key])
    return predict

  def predict(self, predict_fn, num_outputs: int, channel_offsets=None, name: str = "prediction"):
    """[D, H, W, K] float32 probabilities of the whole volume (np.ndarray or np.memmap)."""
    out = None
    if self.scratch_dir is not None:
      os.makedirs(self.scratch_dir, exist_ok=True)
      out = np.lib.format.open_memmap(os.path.join(self.scratch_dir, f"{name}.npy"), mode="w+",
                                      dtype=np.float32,
                                      shape=(*self.volume.shape[:3], num_outputs))
    return sliding_window_predict(
        self.volume, self._window_fn(predict_fn), self.window, self.stride,
        num_outputs=num_outputs, padding=self.padding, batch_size=self.batch_size,
        blend=self.blend, flip_axes=self.flip_axes, channel_offsets=channel_offsets, out=out)


def _labels(labels, shape, name: str) -> np.ndarray:
  labels = check_label_volume(np.asarray(labels), name)
  if labels.shape != tuple(shape[:3]):
    raise DataError(name, f"shape {labels.shape} differs from the volume's {tuple(shape[:3])}")
  return labels


class NeuronEvaluator:
  """Affinities -> waterz -> SNEMI3D scores.

  The waterz threshold (of `thresholds`) is never chosen on the voxels it is scored on:
  the validation volume is cut in two halves along its longest axis, each half is
  scored at the threshold of lowest adapted Rand error on the other half, and
  `{prefix}/arand`, `{prefix}/voi_split`, `{prefix}/voi_merge` are the means over the
  two halves (`cross_fitted`). `{prefix}/arand_oracle` is the lowest whole-volume
  error over the thresholds (tuned on the scored voxels themselves, optimistic) and
  `{prefix}/waterz_threshold` its threshold, the one to use on new data. The model's
  first 3 output channels must be the nearest-neighbour affinities; `offsets` lists
  every output channel's offset.
  """

  def __init__(self, inference: VolumeInference, labels, *,
               offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
               thresholds: Sequence[float] = (0.1, 0.3, 0.5, 0.7), min_size: int = 0,
               prefix: str = "val"):
    self.inference, self.offsets, self.thresholds = inference, offsets, thresholds
    self.labels = _labels(labels, inference.volume.shape, "neuron labels")
    self.min_size, self.prefix = min_size, prefix

  def run(self, predict_fn) -> Iterable[tuple[str, float]]:
    affinities = self.inference.predict(predict_fn, len(self.offsets), self.offsets, "affinities")
    axis = int(np.argmax(self.labels.shape))
    cut = self.labels.shape[axis] // 2
    halves = (slice(None, cut), slice(cut, None))
    whole, per_half = {}, ({}, {})
    for threshold, segmentation in em_postprocess.waterz_segmentations(
        affinities, self.thresholds, min_size=self.min_size):
      whole[threshold] = em_metrics.adapted_rand(self.labels, segmentation)["arand"]
      for scores, half in zip(per_half, halves):
        gt, seg = np.moveaxis(self.labels, axis, 0)[half], np.moveaxis(segmentation, axis, 0)[half]
        table = em_metrics.overlap(np.ascontiguousarray(gt), np.ascontiguousarray(seg))
        scores[threshold] = {**em_metrics.adapted_rand(gt, seg, table),
                             **em_metrics.variation_of_information(gt, seg, table)}
    for key, value in cross_fitted(*per_half).items():
      yield f"{self.prefix}/{key}", value
    best = min(whole, key=whole.get)
    yield f"{self.prefix}/arand_oracle", float(whole[best])
    yield f"{self.prefix}/waterz_threshold", float(best)


def cross_fitted(scores_a: dict, scores_b: dict) -> dict[str, float]:
  """Two halves' {threshold: {"arand", "voi_split", "voi_merge", ...}} -> the mean over
  the halves of each one's scores at the threshold of lowest "arand" on the other."""
  best_a = min(scores_a, key=lambda t: scores_a[t]["arand"])
  best_b = min(scores_b, key=lambda t: scores_b[t]["arand"])
  return {key: float((scores_a[best_b][key] + scores_b[best_a][key]) / 2)
          for key in ("arand", "voi_split", "voi_merge")}


class MitochondriaEvaluator:
  """Binary + contour (channels 0, 1 of K) -> seeded watershed -> MitoEM scores.

  Reports `{prefix}/ap75` and `{prefix}/ap50` (instances ranked by mean foreground
  probability), `{prefix}/dice` and `{prefix}/iou` of the foreground (probability >
  0.5) against labels != 0. `watershed_options` go to
  `em_postprocess.binary_contour_watershed`.
  """

  def __init__(self, inference: VolumeInference, labels, *, num_outputs: int = 2,
               watershed_options: dict | None = None, prefix: str = "val"):
    self.inference, self.num_outputs = inference, num_outputs
    self.labels = _labels(labels, inference.volume.shape, "mitochondria labels")
    self.watershed_options, self.prefix = dict(watershed_options or {}), prefix

  def run(self, predict_fn) -> Iterable[tuple[str, float]]:
    prediction = self.inference.predict(predict_fn, self.num_outputs, name="binary_contour")
    instances = em_postprocess.binary_contour_watershed(prediction, **self.watershed_options)
    table = em_metrics.overlap(self.labels, instances)
    scores = em_metrics.instance_scores_by_mean(instances, prediction[..., 0])
    for name, iou in (("ap75", 0.75), ("ap50", 0.5)):
      ap = em_metrics.instance_ap(self.labels, instances, iou, scores, table)
      yield f"{self.prefix}/{name}", ap
    overlap = em_metrics.foreground_dice_iou(self.labels, prediction[..., 0] > 0.5)
    yield f"{self.prefix}/dice", overlap["dice"]
    yield f"{self.prefix}/iou", overlap["iou"]
