"""K-fold cross-validation of NeuroSeg-III (from scratch) on the 10 real ABO images.

For each fold k of --num_folds (default 5: 8 training / 2 test images):
  1. trains `configs/neuroseg3_seg.py:source=abo,fold=k,...` with the training
     engine, on random native-scale crops of --image_size pixels (the `abo` variant);
     a fold whose workdir already holds its final checkpoint is restored, not retrained;
  2. segments the fold's TRAINING images (whole fields of view, letterboxed to
     --eval_size; the network is fully convolutional) and picks the confidence
     threshold that maximises their pooled F1;
  3. applies that threshold to the fold's TEST images: per image TP / FP / FN
     (mask IoU >= 0.5, one-to-one Hungarian matching), plus mask mAP50 / mAP50-95
     and, for reference only, the F1 an oracle threshold tuned on the test images
     would give (`test_oracle_f1`, optimistic).
TP / FP / FN are pooled over all test images (with all folds, every image is
tested exactly once). Writes WORKDIR/crossval.csv and crossval.json (one row per
fold + a pooled row), an outline figure per test image (WORKDIR/figures/) and
prints the table.

  python experiments/abo_crossval.py --workdir /tmp/abo_cv --steps 200 --image_size 160
  python experiments/abo_crossval.py --workdir /tmp/abo_cv_eps --folds 0 --assigner_eps 1e-9
  python experiments/abo_crossval.py --workdir /tmp/abo_authors --steps 400 \
      --val_images 524691284_0+539670003_0   # the authors' split

The training images' threshold is applied unchanged to the test images; the
first two steps are `train_and_score`, which experiments/architecture_ablation.py reuses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np

from neuroseg_jax import config_loading
from neuroseg_jax import runtime
from neuroseg_jax import tasks
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import flip_tta as flip_tta_lib
from neuroseg_jax.evaluation import mask_map
from neuroseg_jax.evaluation import neuron_evaluator
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.tasks import yolo_seg
from neuroseg_jax.training import loop
from neuroseg_jax.training import mesh as mesh_lib

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "neuroseg3_seg.py")
def forward_ms_per_image(predict, samples: Sequence[neuron_evaluator.EvalSample],
                         batch_size: int, repeats: int = 3) -> float:
  """Wall-clock ms per image of the compiled network (a batch of the first samples)."""
  images = np.stack([samples[i % len(samples)].image for i in range(batch_size)])
  predict({"image": images})  # compiled already, but keep the first call untimed
  start = time.perf_counter()
  for _ in range(repeats):
    predict({"image": images})
  return 1e3 * (time.perf_counter() - start) / (repeats * batch_size)


def train_and_score(config: ml_collections.ConfigDict, workdir: str,
                    devices: Sequence[jax.Device], figure_dir: str | None = None,
                    flip_tta: bool = False) -> dict:
  """Trains (or restores) `config` in `workdir`, tunes the confidence threshold on its
  training images and scores its validation images at that threshold.

  Returns a flat dict: threshold, train_f1, tp / fp / fn, precision / recall / f1,
  map50 / map50_95, oracle_f1 (threshold tuned on the validation images themselves),
  train_seconds (of this call: only a restore when `workdir` held a finished run),
  forward_ms_per_image, images (validation names) and per_image
  ({"image", "tp", "fp", "fn", "f1"} per validation image).
  """
  start = time.time()
  task = tasks.build(config)
  state = loop.train(task, workdir, devices=devices)
  train_seconds = time.time() - start
  predict = loop.make_predict_fn(task, state, mesh_lib.make_data_mesh(devices))
  if flip_tta:
    predict = flip_tta_lib.with_flips(predict)
  size = config.eval.image_size or config.data.image_size
  batch = config.eval.batch_size
  val_samples = [yolo_seg.eval_sample(s, size) for s in task.val_samples]
  result = neuron_evaluator.calibrate_then_score(
      predict, [yolo_seg.eval_sample(s, size) for s in task.train_samples], val_samples, batch,
      settings=task.postprocess_settings())
  val, threshold, pooled = result.test, result.threshold, result.pooled
  _, oracle = neuron_matching.best_confidence_threshold(val.ious, val.scores)
  if figure_dir is not None:
    for index, (sample, counts) in enumerate(zip(val_samples, result.per_image)):
      figures.save_outline_figure(
          os.path.join(figure_dir, f"{sample.name}.png"), sample.display, sample.true_masks,
          val.kept_masks(index, threshold), f"{sample.name}  conf >= {threshold:.2f}  "
          f"P {counts.precision:.3f}  R {counts.recall:.3f}  F1 {counts.f1:.3f}")
  return {"images": val.names, "threshold": threshold,
          "train_f1": result.calibration_counts.f1,
          "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn, "precision": pooled.precision,
          "recall": pooled.recall, "f1": pooled.f1,
          **mask_map.mask_map(val.ious, val.scores), "oracle_f1": oracle.f1,
          "train_seconds": train_seconds,
          "forward_ms_per_image": forward_ms_per_image(predict, val_samples, batch),
          "per_image": [{"image": name, "tp": c.tp, "fp": c.fp, "fn": c.fn, "f1": c.f1}
                        for name, c in zip(val.names, result.per_image)]}


def fold_config(args, fold: int) -> ml_collections.ConfigDict:
  """`configs/neuroseg3_seg.py:abo,source=abo,fold=...`: the recipe's native-scale crops
  of --image_size pixels, every other recipe value given explicitly."""
  config = config_loading.load_config(
      f"{CONFIG}:abo,source=abo,fold={fold},num_folds={args.num_folds},num_steps={args.steps},"
      f"batch_size={args.batch_size},image_size={args.image_size},eval_image_size={args.eval_size},"
      f"lr={args.lr},seed={args.seed},scale={args.scale},val_images={args.val_images},"
      f"nms_iou={args.nms_iou}")
  config.eval_every = 0  # the engine's own (test-tuned) evaluation only at the end
  config.grad_accum_steps, config.grad_accum_form = args.grad_accum_steps, args.grad_accum_form
  config.batch_norm_stats_batches = args.batch_norm_stats_batches
  config.eval.batch_size = args.eval_batch_size
  config.eval.figures = False
  if args.assigner_eps is not None:
    config.loss.assigner_eps = args.assigner_eps
  return config


def pooled_row(rows: list[dict]) -> dict:
  counts = sum((neuron_matching.Counts(r["tp"], r["fp"], r["fn"]) for r in rows),
               neuron_matching.Counts())
  return {"fold": "pooled", "images": ";".join(r["images"] for r in rows), "tp": counts.tp,
          "fp": counts.fp, "fn": counts.fn, "precision": counts.precision,
          "recall": counts.recall, "f1": counts.f1,
          "mean_fold_f1": float(np.mean([r["f1"] for r in rows])),
          "std_fold_f1": float(np.std([r["f1"] for r in rows]))}


COLUMNS = ("fold", "images", "threshold", "train_f1", "tp", "fp", "fn", "precision", "recall",
           "f1", "map50", "map50_95", "oracle_f1", "train_seconds", "forward_ms_per_image",
           "mean_fold_f1", "std_fold_f1")


def write_tables(workdir: str, rows: list[dict], meta: dict) -> None:
  with open(os.path.join(workdir, "crossval.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(workdir, "crossval.json"), "w") as f:
    json.dump({**meta, "rows": rows}, f, indent=2)


def print_table(rows: list[dict]) -> None:
  print(f"{'fold':>6} {'images':>33} {'thr':>5} {'TP':>5} {'FP':>5} {'FN':>5} {'P':>6} "
        f"{'R':>6} {'F1':>6} {'mAP50':>6} {'oracleF1':>8}")
  for r in rows:
    fmt = lambda key, w=6: f"{r[key]:{w}.3f}" if isinstance(r.get(key), float) else " " * w
    print(f"{r['fold']:>6} {r['images']:>33} {fmt('threshold', 5)} {r['tp']:5d} {r['fp']:5d} "
          f"{r['fn']:5d} {fmt('precision')} {fmt('recall')} {fmt('f1')} {fmt('map50')} "
          f"{fmt('oracle_f1', 8)}")


def build_parser(description: str = __doc__.split("\n")[0]) -> argparse.ArgumentParser:
  """The arguments of a split (or of the folds): data, recipe and evaluation."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--folds", default="", help="comma-separated folds to run (default all)")
  parser.add_argument("--val_images", default="", help="one split instead of the folds: the "
                      "validation image names joined by '+' (the authors' split: "
                      "524691284_0+539670003_0)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--grad_accum_steps", type=int, default=1,
                      help="micro-batches per optimizer step (BatchNorm sees each alone)")
  parser.add_argument("--grad_accum_form", default="calls", choices=("loop", "unroll", "calls"),
                      help="how micro-batches run (same values; 'calls' uses least memory)")
  parser.add_argument("--batch_norm_stats_batches", type=int, default=0,
                      help="> 0: re-estimate BatchNorm statistics on this many training "
                      "batches after the last step (for micro-batches)")
  parser.add_argument("--image_size", type=int, default=160, help="training crop size")
  parser.add_argument("--eval_size", type=int, default=512, help="whole-field letterbox size")
  parser.add_argument("--eval_batch_size", type=int, default=2)
  parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate "
                      "(ultralytics' choice for short runs)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--nms_iou", type=float, default=0.5,
                      help="evaluation box NMS (the recipe's; runs before it used 0.7)")
  parser.add_argument("--flip_tta", action="store_true", help="evaluate (threshold "
                      "choice included) with test-time flips (evaluation/flip_tta.py)")
  parser.add_argument("--scale", default="s", help="model scale (s = NeuroSeg-III)")
  parser.add_argument("--assigner_eps", type=float, default=None,
                      help="override config.loss.assigner_eps (config default 1e-30)")
  return parser


def parse_args(argv=None):
  return build_parser().parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  runtime.keep_freed_memory(calls_in_order=True)  # as training runs do (neuroseg_jax.main)
  os.makedirs(args.workdir, exist_ok=True)
  # Every fold compiles the same step and predict functions: reuse them from disk.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
  devices = jax.devices()[:1]
  if args.val_images:
    folds = [0]  # the named split (fold_config's val_images wins over the fold)
  else:
    folds = [int(f) for f in args.folds.split(",")] if args.folds else range(args.num_folds)
  meta = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args),
          "hardware": runtime.hardware_description()}
  rows = []
  for fold in folds:
    result = train_and_score(fold_config(args, fold), os.path.join(args.workdir, f"fold{fold}"),
                             devices, os.path.join(args.workdir, "figures"), args.flip_tta)
    rows.append({"fold": fold, **result, "images": ";".join(result["images"])})
    print(f"fold {fold}: threshold {result['threshold']:.2f} (train F1 {result['train_f1']:.3f})"
          f" -> test P {result['precision']:.3f} R {result['recall']:.3f} "
          f"F1 {result['f1']:.3f}  ({result['train_seconds']:.0f} s)", flush=True)
    # Tables after every fold: a run stopped early keeps its finished folds.
    table = rows + [pooled_row(rows)]
    write_tables(args.workdir, table, meta)
  print(f"{meta['command']}\n{meta['hardware']}")
  print_table(table)
  return table


if __name__ == "__main__":
  main()
