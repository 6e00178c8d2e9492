"""Validation of NeuroSeg-III: neuron P / R / F1, mask mAP and the confidence threshold.

One procedure serves the engine's evaluator, the demo and the studies:
  1. `match_detections`: run predict_fn on fixed-size batches of letterboxed
     images (the last batch padded by repeating its last image, so a jitted
     predict_fn compiles once), post-process at a low confidence, and compute the
     mask IoU of every detection with every true neuron (original resolution);
  2. `calibrate_then_score`: choose the confidence threshold that maximises the
     pooled F1 on calibration images (e.g. the training images: no test image
     is looked at), then count TP / FP / FN on the test images at that threshold
     (IoU >= 0.5, one-to-one Hungarian matching).
`NeuronSegEvaluator.run(predict_fn)` (the Evaluator protocol of `training/task.py`)
reports precision / recall / F1 at a threshold from calibration samples, a fixed
`conf_threshold`, or, when neither is given, the best threshold of the
evaluated set itself (optimistic: tuned on it); plus mAP50 / mAP50-95 and
optional outline figures. It yields "<prefix>/precision", "<prefix>/recall",
"<prefix>/f1", "<prefix>/map50", "<prefix>/map50_95", "<prefix>/conf_threshold",
"<prefix>/best_conf_threshold", "<prefix>/best_f1".
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import sparse

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.instance_targets import Letterbox
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import mask_map
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.evaluation import yolo_postprocess as post

EVAL_SETTINGS = post.PostprocessSettings(conf_threshold=post.LOW_CONFIDENCE)


@dataclasses.dataclass(frozen=True)
class EvalSample:
  """One validation image.

  name: identifier (used in figure file names and error messages).
  image: [S, S, C] float32 letterboxed, normalised network input.
  true_masks: [Nt, H, W] bool true neurons at the original resolution (H, W).
  letterbox: placement of the [H, W] original inside the input (default: none,
    the input is the original image).
  display: optional [H, W] grey image for figures (default: the input's first
    channel mapped back to the original resolution).
  """
  name: str
  image: np.ndarray
  true_masks: np.ndarray
  letterbox: Letterbox = post.IDENTITY
  display: np.ndarray | None = None

  @property
  def original_hw(self) -> tuple[int, int]:
    return tuple(self.true_masks.shape[1:])


@dataclasses.dataclass
class Detections:
  """Detections of a set of images, matched to the truth.

  names: image names. ious: per image [Np, Nt] mask IoU with the true neurons.
  scores: per image [Np] confidences. masks: per image [Np, H*W] sparse rows
  (a thousand low-confidence 512 px masks would take 250 MB dense).
  sizes: per image (H, W), the original resolution.
  """
  names: list[str]
  ious: list[np.ndarray]
  scores: list[np.ndarray]
  masks: list[sparse.csr_matrix]
  sizes: list[tuple[int, int]]

  def kept_masks(self, index: int, threshold: float) -> np.ndarray:
    """[Nk, H, W] bool masks of image `index` with score >= threshold."""
    rows = self.masks[index][np.flatnonzero(self.scores[index] >= threshold)]
    return rows.toarray().reshape(-1, *self.sizes[index]) > 0

  def counts_at(self, threshold: float) -> list[neuron_matching.Counts]:
    """Per-image counts keeping the detections with score >= threshold."""
    return [neuron_matching.counts_from_iou(iou[s >= threshold])
            for iou, s in zip(self.ious, self.scores)]


@dataclasses.dataclass
class CalibratedScore:
  """Test-set counts at the threshold chosen on calibration images."""
  threshold: float
  calibration_counts: neuron_matching.Counts
  test: Detections
  per_image: list[neuron_matching.Counts]

  @property
  def pooled(self) -> neuron_matching.Counts:
    return sum(self.per_image, neuron_matching.Counts())


def detect(samples: Sequence[EvalSample], predict_fn: Callable[[dict], dict], batch_size: int,
           settings: post.PostprocessSettings = EVAL_SETTINGS) -> Iterator[post.Instances]:
  """Post-processed detections of every sample, in order."""
  for start in range(0, len(samples), batch_size):
    chunk = samples[start:start + batch_size]
    images = [s.image for s in chunk]
    images += [images[-1]] * (batch_size - len(chunk))
    outputs = predict_fn({"image": np.stack(images).astype(np.float32)})
    yield from post.postprocess_batch(outputs, [s.original_hw for s in chunk],
                                      [s.letterbox for s in chunk], settings)


def match_detections(samples: Sequence[EvalSample], predict_fn: Callable[[dict], dict],
                     batch_size: int,
                     settings: post.PostprocessSettings = EVAL_SETTINGS) -> Detections:
  """Detects on `samples` at low confidence and matches every detection to the truth."""
  _check_samples(samples)
  detections = Detections([], [], [], [], [])
  for sample, found in zip(samples, detect(samples, predict_fn, batch_size, settings)):
    detections.names.append(sample.name)
    detections.ious.append(neuron_matching.mask_iou_matrix(found.masks, sample.true_masks))
    detections.scores.append(found.scores)
    detections.masks.append(neuron_matching.sparse_rows(found.masks))
    detections.sizes.append(sample.original_hw)
  return detections


def calibrate_then_score(predict_fn: Callable[[dict], dict],
                         calibration: Sequence[EvalSample] | Detections,
                         test: Sequence[EvalSample], batch_size: int,
                         thresholds: Sequence[float] = neuron_matching.DEFAULT_THRESHOLDS,
                         settings: post.PostprocessSettings = EVAL_SETTINGS
                         ) -> CalibratedScore:
  """Chooses the confidence threshold on `calibration`, then scores `test` with it."""
  if not isinstance(calibration, Detections):
    calibration = match_detections(calibration, predict_fn, batch_size, settings)
  threshold, calibration_counts = neuron_matching.best_confidence_threshold(
      calibration.ious, calibration.scores, thresholds)
  detections = match_detections(test, predict_fn, batch_size, settings)
  return CalibratedScore(threshold, calibration_counts, detections,
                         detections.counts_at(threshold))


def _check_samples(samples: Sequence[EvalSample]) -> None:
  if not samples:
    raise DataError("validation samples", "the evaluator needs at least one sample")
  input_shape = samples[0].image.shape
  for sample in samples:
    if sample.image.shape != input_shape or sample.image.ndim != 3:
      raise DataError(sample.name, f"image must be [S, S, C] like the first sample "
                      f"{input_shape}, got {sample.image.shape}")
    if sample.true_masks.ndim != 3:
      raise DataError(sample.name, f"true masks must be [N, H, W], got {sample.true_masks.shape}")
    if sample.display is not None and np.shape(sample.display) != sample.original_hw:
      raise DataError(sample.name, f"display image {np.shape(sample.display)} differs from the "
                      f"true masks' size {sample.original_hw}")


class NeuronSegEvaluator:
  """Neuron-level evaluation of a YOLO-seg model on a fixed set of samples."""

  def __init__(self, samples: Sequence[EvalSample],
               settings: post.PostprocessSettings = EVAL_SETTINGS, batch_size: int = 4,
               conf_threshold: float | None = None, prefix: str = "val",
               figure_dir: str | os.PathLike | None = None,
               thresholds: Sequence[float] = neuron_matching.DEFAULT_THRESHOLDS,
               calibration_samples: Sequence[EvalSample] = ()):
    _check_samples(samples)
    if calibration_samples and conf_threshold is not None:
      raise ValueError("give either calibration_samples or conf_threshold, not both")
    self.samples = list(samples)
    self.calibration_samples = list(calibration_samples)
    self.settings = settings
    self.batch_size = batch_size
    self.conf_threshold = conf_threshold
    self.prefix = prefix
    self.figure_dir = figure_dir
    self.thresholds = thresholds

  def run(self, predict_fn: Callable[[dict], dict]) -> Iterator[tuple[str, float]]:
    """predict_fn({"image": [B, S, S, C]}) -> head outputs; yields (name, value)."""
    detections = match_detections(self.samples, predict_fn, self.batch_size, self.settings)
    best_threshold, best_counts = neuron_matching.best_confidence_threshold(
        detections.ious, detections.scores, self.thresholds)
    if self.calibration_samples:
      calibration = match_detections(self.calibration_samples, predict_fn, self.batch_size,
                                     self.settings)
      threshold, _ = neuron_matching.best_confidence_threshold(
          calibration.ious, calibration.scores, self.thresholds)
    else:
      threshold = best_threshold if self.conf_threshold is None else self.conf_threshold
    counts = sum(detections.counts_at(threshold), neuron_matching.Counts())
    average_precision = mask_map.mask_map(detections.ious, detections.scores,
                                          self.settings.max_detections)
    if self.figure_dir is not None:
      self._write_figures(detections, threshold)
    values = {"precision": counts.precision, "recall": counts.recall, "f1": counts.f1,
              "map50": average_precision["map50"],
              "map50_95": average_precision["map50_95"], "conf_threshold": threshold,
              "best_conf_threshold": best_threshold, "best_f1": best_counts.f1}
    for name, value in values.items():
      yield f"{self.prefix}/{name}", float(value)

  def _write_figures(self, detections: Detections, threshold: float) -> None:
    for index, (sample, counts) in enumerate(zip(self.samples,
                                                 detections.counts_at(threshold))):
      display = sample.display
      if display is None:
        display = post.unletterbox_image(sample.image[..., 0], sample.letterbox,
                                         sample.original_hw)
      caption = (f"{sample.name}  conf >= {threshold:.2f}  P {counts.precision:.3f}  "
                 f"R {counts.recall:.3f}  F1 {counts.f1:.3f}")
      figures.save_outline_figure(os.path.join(self.figure_dir, f"{sample.name}.png"), display,
                                  sample.true_masks, detections.kept_masks(index, threshold),
                                  caption)
