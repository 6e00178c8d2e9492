"""`neuroseg-jax evaluate`: a model against a labeled folder, per image and pooled.

A predicted neuron is matched to at most one true neuron (one-to-one Hungarian
matching, mask IoU >= 0.5). Writes OUT/evaluation.csv (image, true, predicted, tp,
fp, fn, precision, recall, f1, mean_matched_iou; a last "pooled" row) and
OUT/NAME_overlay.png (true outlines green, predicted magenta) per image.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from neuroseg_jax import predictor
from neuroseg_jax.data import images
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import neuron_matching

COLUMNS = ("image", "true", "predicted", "tp", "fp", "fn", "precision", "recall", "f1",
           "mean_matched_iou")


@dataclasses.dataclass
class ImageScore:
  """Counts of one image plus the IoU of each matched pair."""
  name: str
  counts: neuron_matching.Counts
  matched_iou: np.ndarray

  def row(self) -> dict:
    c = self.counts
    return {"image": self.name, "true": c.tp + c.fn, "predicted": c.tp + c.fp, "tp": c.tp,
            "fp": c.fp, "fn": c.fn, "precision": round(c.precision, 4),
            "recall": round(c.recall, 4), "f1": round(c.f1, 4),
            "mean_matched_iou": round(float(self.matched_iou.mean()), 4)
            if len(self.matched_iou) else ""}


def score_image(name: str, pred_masks: np.ndarray, true_masks: np.ndarray) -> ImageScore:
  iou = neuron_matching.mask_iou_matrix(pred_masks, true_masks)
  pairs = neuron_matching.match_pairs(iou)
  counts = neuron_matching.Counts(len(pairs), len(pred_masks) - len(pairs),
                                  len(true_masks) - len(pairs))
  return ImageScore(name, counts, iou[pairs[:, 0], pairs[:, 1]] if len(pairs) else np.zeros(0))


def evaluate(model_name: str, data: str, out: str, tta: bool = False) -> list[ImageScore]:
  """Scores `model_name` on every labeled image of `data` (with `tta`: flip-averaged,
  at the model's threshold for that); the last entry is pooled."""
  examples = images.list_yolo_folder(data)
  model = predictor.load_model(model_name)
  os.makedirs(out, exist_ok=True)
  scores = []
  for name, image_path, label_path in examples:
    image, true_masks = images.read_yolo_example(image_path, label_path)
    found = model.predict([image], tta=tta)[0]
    scores.append(score_image(name, found.masks, true_masks))
    c = scores[-1].counts
    figures.save_outline_figure(
        os.path.join(out, f"{name}_overlay.png"), image, true_masks, found.masks,
        f"{name}  P {c.precision:.3f}  R {c.recall:.3f}  F1 {c.f1:.3f}")
  pooled = ImageScore("pooled", sum((s.counts for s in scores), neuron_matching.Counts()),
                      np.concatenate([s.matched_iou for s in scores]))
  scores.append(pooled)
  with open(os.path.join(out, "evaluation.csv.tmp"), "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(s.row() for s in scores)
  os.replace(os.path.join(out, "evaluation.csv.tmp"), os.path.join(out, "evaluation.csv"))
  return scores
