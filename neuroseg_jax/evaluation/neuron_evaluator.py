"""Validation of NeuroSeg-III: neuron P / R / F1, mask mAP and the best confidence.

`NeuronSegEvaluator.run(predict_fn)` (the Evaluator protocol of `tasks/base.py`):
  1. runs predict_fn on fixed-size batches of the letterboxed validation images
     (the last batch padded by repeating its last image, so a jitted predict_fn
     compiles once) and post-processes at a low confidence (`settings`);
  2. per image, computes the mask IoU of every detection with every true neuron
     (original resolution);
  3. sweeps confidence thresholds for the pooled F1 (`best_conf_threshold`), reads
     mAP50 / mAP50-95 from all detections, and reports precision / recall / F1 at
     `conf_threshold` (a threshold fixed beforehand, e.g. tuned on a separate
     validation split) or, when that is None, at the best threshold of this very
     set (then an optimistic number: the threshold was tuned on it);
  4. optionally writes one outline figure per image to `figure_dir`.
Yields (name, value) pairs named "<prefix>/precision", "<prefix>/recall",
"<prefix>/f1", "<prefix>/map50", "<prefix>/map50_95", "<prefix>/best_conf_threshold",
"<prefix>/best_f1".
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

EVAL_SETTINGS = post.PostprocessSettings(conf_threshold=0.001)


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
class _Scored:
  """What is kept per image: IoU [Np, Nt], scores [Np], masks [Np, H*W] sparse."""
  iou: np.ndarray
  scores: np.ndarray
  masks: sparse.csr_matrix | None


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
               thresholds: Sequence[float] = neuron_matching.DEFAULT_THRESHOLDS):
    _check_samples(samples)
    self.samples = list(samples)
    self.settings = settings
    self.batch_size = batch_size
    self.conf_threshold = conf_threshold
    self.prefix = prefix
    self.figure_dir = figure_dir
    self.thresholds = thresholds

  def detect(self, predict_fn: Callable[[dict], dict]) -> Iterator[post.Instances]:
    """Post-processed detections of every sample, in order (low confidence)."""
    for start in range(0, len(self.samples), self.batch_size):
      chunk = self.samples[start:start + self.batch_size]
      images = [s.image for s in chunk]
      images += [images[-1]] * (self.batch_size - len(chunk))
      outputs = predict_fn({"image": np.stack(images).astype(np.float32)})
      yield from post.postprocess_batch(outputs, [s.original_hw for s in chunk],
                                        [s.letterbox for s in chunk], self.settings)

  def run(self, predict_fn: Callable[[dict], dict]) -> Iterator[tuple[str, float]]:
    """predict_fn({"image": [B, S, S, C]}) -> head outputs; yields (name, value)."""
    scored = []
    for sample, found in zip(self.samples, self.detect(predict_fn)):
      scored.append(_Scored(
          neuron_matching.mask_iou_matrix(found.masks, sample.true_masks), found.scores,
          neuron_matching.sparse_rows(found.masks) if self.figure_dir is not None else None))
    ious = [s.iou for s in scored]
    scores = [s.scores for s in scored]
    best_threshold, best_counts = neuron_matching.best_confidence_threshold(
        ious, scores, self.thresholds)
    threshold = best_threshold if self.conf_threshold is None else self.conf_threshold
    counts = neuron_matching.pooled_counts([s.iou[s.scores >= threshold] for s in scored])
    average_precision = mask_map.mask_map(ious, scores, self.settings.max_detections)
    if self.figure_dir is not None:
      self._write_figures(scored, threshold)
    values = {"precision": counts.precision, "recall": counts.recall, "f1": counts.f1,
              "map50": average_precision["map50"],
              "map50_95": average_precision["map50_95"],
              "best_conf_threshold": best_threshold, "best_f1": best_counts.f1}
    for name, value in values.items():
      yield f"{self.prefix}/{name}", float(value)

  def _write_figures(self, scored: Sequence[_Scored], threshold: float) -> None:
    for sample, result in zip(self.samples, scored):
      keep = result.scores >= threshold
      pred_masks = result.masks[np.flatnonzero(keep)].toarray().reshape(-1, *sample.original_hw)
      counts = neuron_matching.counts_from_iou(result.iou[keep])
      display = sample.display
      if display is None:
        display = post.unletterbox_image(sample.image[..., 0], sample.letterbox,
                                         sample.original_hw)
      caption = (f"{sample.name}  conf >= {threshold:.2f}  P {counts.precision:.3f}  "
                 f"R {counts.recall:.3f}  F1 {counts.f1:.3f}")
      figures.save_outline_figure(os.path.join(self.figure_dir, f"{sample.name}.png"), display,
                                  sample.true_masks, pred_masks > 0, caption)
