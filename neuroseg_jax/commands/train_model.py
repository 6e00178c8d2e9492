"""`neuroseg-jax train`: a folder of labeled summary images -> a model folder.

The run uses the real-data recipe (`configs/neuroseg3_seg.py:abo`: native-scale
crops, AdamW 2e-3, all labeled images unless `--val` holds some out; with `--zoom 2`
its `abo_zoom2` variant, at twice the scale) in
`MODEL_DIR/run/` (resumable: calling the command again continues it), then
writes the model folder (`model_folder.py`) with the confidence threshold that
maximises F1 on the training images, and a model card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
import numpy as np

from neuroseg_jax import config_loading
from neuroseg_jax import model_folder
from neuroseg_jax import predictor
from neuroseg_jax import runtime
from neuroseg_jax import tasks
from neuroseg_jax.data import images
from neuroseg_jax.data import neuron_datasets
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.training import loop

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "neuroseg3_seg.py"
INTENDED_USE = ("Two-photon GCaMP6 calcium imaging of mouse cortex, ABO-like summary images "
                "(projections of the recording) at about 0.8 um per pixel; somata of "
                "active neurons.")


RECIPES = {1: "abo", 2: "abo_zoom2"}  # config variant per training zoom


def recipe_config(data: str, num_steps: int | None, val_fraction: float, init: str,
                  scale: str = "s", seed: int = 0, zoom: int = 1) -> ml_collections.ConfigDict:
  """The real-data recipe at `zoom` on `data` (YOLO layout), validating on the last
  images; num_steps None keeps the recipe's."""
  if zoom not in RECIPES:
    raise DataError("--zoom", f"must be one of {sorted(RECIPES)}, got {zoom}")
  count = len(images.list_yolo_folder(data))
  num_val = int(round(val_fraction * count))
  if num_val >= count:
    raise DataError(data, f"--val {val_fraction} leaves no training image of {count}")
  if not CONFIG.is_file():
    raise DataError(CONFIG, "config not found; run from a source checkout installed with "
                    "`pip install -e .`")
  pretrained = {"scratch": ""}.get(init, predictor.BUILTIN_MODELS.get(init, init))
  steps = "" if num_steps is None else f"num_steps={num_steps},"
  return config_loading.load_config(
      f"{CONFIG}:{RECIPES[zoom]},source=yolo_folder,folder={os.path.abspath(data)},{steps}"
      f"num_val={num_val},seed={seed},pretrained={pretrained},scale={scale}")


def _spec(config: ml_collections.ConfigDict, threshold: float, tta_threshold: float) -> dict:
  return {"architecture": config.model.to_dict(),
          "input": {"channels": ["image"] * config.data.source_args.get("num_channels", 3),
                    "normalization": "percentile",
                    "tile_size": config.eval.image_size or config.data.image_size,
                    "overlap": 64, "zoom": config.eval.zoom},
          "postprocess": {"nms_iou": config.eval.nms_iou},
          "conf_threshold": threshold, "tta_conf_threshold": tta_threshold}


def _card(config, train_names, scores: dict, seconds: float, command: str) -> str:
  lines = ["# NeuroSeg-III model card", "",
           f"- Architecture: NeuroSeg-III (YOLOv8-seg, scale {config.model.scale}, "
           f"{config.model.block} blocks, {config.model.neck} neck).",
           f"- Training data: {len(train_names)} labeled images from "
           f"`{config.data.source_args.folder}`: {', '.join(train_names)}.",
           f"- Recipe: `configs/neuroseg3_seg.py:{RECIPES[round(config.eval.zoom)]}`, "
           f"{config.num_steps} steps of batch {config.batch_size}, "
           f"{config.data.image_size} px crops at {config.eval.zoom:g}x the field's scale, AdamW "
           f"{config.optimizer.lr}; initialised from "
           f"{config.pretrained or 'random weights'}.",
           f"- Command: `{command}`", f"- Hardware: {runtime.hardware_description()}.",
           f"- Training wall time: {seconds / 60:.1f} min (the logged steps, compilation "
           "included; `run/metrics.jsonl`).",
           f"- Intended use: {INTENDED_USE}", "", "## Scores (IoU >= 0.5, Hungarian matching)",
           ""]
  lines += [f"- {name}: {value}" for name, value in scores.items()]
  return "\n".join(lines) + "\n"


def calibrate(model: predictor.NeuronModel, samples,
              tta: bool = False) -> tuple[float, neuron_matching.Counts]:
  """The confidence threshold maximising pooled F1 of `model` on labeled samples
  (with `tta`: of its flip-averaged detections)."""
  ious, scores = [], []
  for sample in samples:
    found = model.detect(sample.image, tta=tta)
    ious.append(neuron_matching.mask_iou_matrix(found.masks, sample.masks))
    scores.append(found.scores)
  return neuron_matching.best_confidence_threshold(ious, scores)


def score(model: predictor.NeuronModel, samples) -> neuron_matching.Counts:
  """Pooled counts of `model` at its own threshold on labeled samples."""
  counts = neuron_matching.Counts()
  for sample in samples:
    found = model.detect(sample.image)
    kept = found.masks[found.scores >= model.conf_threshold]
    counts = counts + neuron_matching.counts_from_iou(
        neuron_matching.mask_iou_matrix(kept, sample.masks))
  return counts


def calibrated_thresholds(model: predictor.NeuronModel, samples) -> tuple[float, float, dict]:
  """(threshold, threshold with --tta, their card entries) chosen on labeled samples."""
  threshold, counts = calibrate(model, samples)
  tta_threshold, tta_counts = calibrate(model, samples, tta=True)
  return threshold, tta_threshold, {
      "confidence threshold (chosen on the training images)": round(threshold, 3),
      "training images F1 at it": round(counts.f1, 4),
      "confidence threshold with --tta (chosen on the training images)":
          round(tta_threshold, 3),
      "training images F1 with --tta": round(tta_counts.f1, 4)}


def recalibrate(model_dir: str, data: str, nms_iou: float, command: str) -> dict:
  """Chooses a model folder's confidence thresholds again (plain and with --tta) on the
  labeled images of `data` with box NMS at `nms_iou`; rewrites its description and adds
  a section to its card (the weights are unchanged). Returns the new scores."""
  folder = model_folder.read(model_dir)
  spec = {**folder.spec, "postprocess": {**folder.spec.get("postprocess", {}),
                                         "nms_iou": nms_iou}}
  model = predictor.NeuronModel(model_folder.ModelFolder(spec, folder.variables), model_dir)
  samples = neuron_datasets.load_neuron_samples("yolo_folder", folder=data)
  threshold, tta_threshold, calibrated = calibrated_thresholds(model, samples)
  scores = {"box NMS IoU": nms_iou, **calibrated}
  card = "\n## Recalibrated (weights unchanged)\n\n" + f"- Command: `{command}`\n" + "".join(
      f"- {name}: {value}\n" for name, value in scores.items())
  model_folder.update_spec(model_dir, {"postprocess": spec["postprocess"],
                                       "conf_threshold": threshold,
                                       "tta_conf_threshold": tta_threshold,
                                       "scores": {**folder.spec.get("scores", {}), **scores}},
                           card)
  return scores


def train_model(data: str, out: str, num_steps: int | None = None, val_fraction: float = 0.0,
                init: str = "scratch", overwrite: bool = False,
                command: str = "neuroseg-jax train", scale: str = "s", zoom: int = 1,
                devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains on `data` (num_steps None: the recipe's) on `devices` (None: all), writes the
  model folder `out`; returns its scores."""
  config = recipe_config(data, num_steps, val_fraction, init, scale, zoom=zoom)
  task = tasks.build(config)
  state = loop.train(task, os.path.join(out, "run"), devices=devices, overwrite=overwrite)
  variables = jax.tree.map(np.asarray, jax.device_get(
      {"params": state["params"], **state["model_state"]}))
  draft = predictor.NeuronModel(model_folder.ModelFolder(_spec(config, 0.0, 0.0), variables),
                               out)
  threshold, tta_threshold, scores = calibrated_thresholds(draft, task.train_samples)
  draft.conf_threshold = threshold
  if task.val_samples:
    counts = score(draft, task.val_samples)
    scores.update({"validation images": ", ".join(s.name for s in task.val_samples),
                   "validation precision": round(counts.precision, 4),
                   "validation recall": round(counts.recall, 4),
                   "validation F1": round(counts.f1, 4)})
  card = _card(config, [s.name for s in task.train_samples], scores,
               loop.training_seconds(os.path.join(out, "run")), command)
  model_folder.write(out, {**_spec(config, threshold, tta_threshold), "scores": scores},
                     variables, card)
  return scores
