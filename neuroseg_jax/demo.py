"""The whole NeuroSeg-III method end to end, on the simulator or on a user's folder.

  unlabeled recordings -> windowed max projections -> TiCo pre-training of the encoder
  labeled recordings   -> summary images -> fine-tuning from the TiCo encoder
  held-out recording   -> segmentation -> precision / recall / F1

Writes to the workdir: tico/ and finetune/ (checkpoints, metrics.jsonl, TensorBoard),
results.json, heldout_overlay.png (true outlines green, predicted magenta) and
heldout_masks.tif (predicted instance-label image, 0 = background).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import jax

from neuroseg_jax import config_loading
from neuroseg_jax.demo_settings import DemoSettings
from neuroseg_jax.demo_settings import check_labeled_folder
from neuroseg_jax import tasks
from neuroseg_jax.data import roi_outputs
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import neuron_evaluator
from neuroseg_jax.tasks import yolo_seg
from neuroseg_jax.training import loop
from neuroseg_jax.training import mesh as mesh_lib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, arg: str):
  path = CONFIGS / name
  if not path.is_file():
    raise FileNotFoundError(f"{path}: config not found; run from a source checkout "
                            "installed with `pip install -e .`")
  return config_loading.load_config(f"{path}:{arg}")


def tico_config(settings: DemoSettings, data_folder: str | None):
  source = "simulator" if data_folder is None else f"images:{Path(data_folder) / 'images'}"
  config = _config("neuroseg3_tico.py",
                   f"scale={settings.scale},block={settings.block},image_size=64,"
                   f"batch_size=8,num_steps={settings.tico_steps}")
  config.data.source = source
  if data_folder is None:
    config.data.simulator.update(height=settings.image_size, width=settings.image_size,
                                 frames=60, num_movies=8)
  config.model.head_hidden, config.model.head_out = 256, 64
  config.log_every = max(1, settings.tico_steps // 10)
  return config


def finetune_config(settings: DemoSettings, data_folder: str | None, pretrained: str):
  common = (f"scale={settings.scale},block={settings.block},neck={settings.neck},"
            f"num_steps={settings.finetune_steps},batch_size={settings.batch_size},"
            f"seed={settings.seed},num_val=1,pretrained={pretrained}")
  if data_folder is None:
    arg = (f"source=simulated,height={settings.image_size},width={settings.image_size},"
           f"frames=200,num_recordings={settings.labeled_recordings},"
           f"image_size={settings.image_size}")
  else:
    arg = (f"source=yolo_folder,folder={data_folder},image_size={settings.image_size},"
           "eval_image_size=512")
  config = _config("neuroseg3_seg.py", f"{arg},{common}")
  if data_folder is not None:  # native-scale crops of large fields of view
    config.data.augment = (f"resized_crop(0.05,0.1,size={settings.image_size})|flip_lr|flip_ud"
                           "|rot90|brightness(0.1)|contrast(0.2)|noise(0.02)")
  config.eval_every = 0
  return config


def _stage(message: str) -> None:
  logging.info("== demo: %s", message)
  print(f"== {message}", flush=True)


def evaluate_held_out(task, state, workdir: str) -> dict:
  """Threshold chosen on the training images, applied to the held-out image(s)."""
  config = task.config
  predict = loop.make_predict_fn(task, state, mesh_lib.make_data_mesh(jax.devices()[:1]))
  size = config.eval.image_size or config.data.image_size
  held_out = [yolo_seg.eval_sample(s, size) for s in task.val_samples]
  result = neuron_evaluator.calibrate_then_score(
      predict, [yolo_seg.eval_sample(s, size) for s in task.train_samples], held_out,
      batch_size=1)
  threshold, counts = result.threshold, result.pooled
  # Figures and label image of the first held-out recording.
  sample, masks = held_out[0], result.test.kept_masks(0, threshold)
  figures.save_outline_figure(
      os.path.join(workdir, "heldout_overlay.png"), sample.display, sample.true_masks, masks,
      f"{sample.name}: P={counts.precision:.2f} R={counts.recall:.2f} F1={counts.f1:.2f}")
  scores = result.test.scores[0]
  roi_outputs.write_label_image(os.path.join(workdir, "heldout_masks.tif"), masks,
                                scores[scores >= threshold])
  return {"held_out": result.test.names, "conf_threshold": threshold,
          "true_neurons": counts.tp + counts.fn, "predicted_neurons": counts.tp + counts.fp,
          "tp": counts.tp, "fp": counts.fp, "fn": counts.fn, "precision": counts.precision,
          "recall": counts.recall, "f1": counts.f1}


def run_demo(workdir: str, data_folder: str | None = None,
             settings: DemoSettings | None = None, overwrite: bool = False) -> dict:
  """Runs pre-training, fine-tuning and held-out evaluation; returns results.json's content.

  A `workdir` holding a demo of other data or settings is refused unless `overwrite`.
  """
  settings = settings or DemoSettings()
  if data_folder is not None:
    check_labeled_folder(data_folder)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  source = "the built-in simulator" if data_folder is None else data_folder
  _stage(f"TiCo pre-training of the encoder on unlabeled images from {source}")
  tico_dir = os.path.join(workdir, "tico")
  loop.train(tasks.build(tico_config(settings, data_folder)), tico_dir, overwrite=overwrite)
  _stage("fine-tuning the segmentation network from the pre-trained encoder")
  task = tasks.build(finetune_config(settings, data_folder, tico_dir))
  state = loop.train(task, os.path.join(workdir, "finetune"), overwrite=overwrite)
  _stage("segmenting the held-out recording")
  results = evaluate_held_out(task, state, workdir)
  results.update(data=source, settings=dataclasses.asdict(settings),
                 seconds=round(time.time() - start, 1))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  _stage(f"held-out {', '.join(results['held_out'])}: precision {results['precision']:.3f} "
         f"recall {results['recall']:.3f} F1 {results['f1']:.3f} "
         f"({results['tp']} of {results['true_neurons']} neurons found, {results['fp']} false "
         f"detections); results in {workdir}")
  return results
