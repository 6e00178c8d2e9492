"""Inference settings of a trained ABO split, chosen on its training images only.

Restores (or trains) the run of `abo_crossval` with the same arguments, runs the
network once per image, plainly and with flip test-time augmentation
(`evaluation/flip_tta.py`), and post-processes the cached outputs with every
combination of NMS IoU and mask margin (`PostprocessSettings.mask_margin`: pixels
added around a box before its mask is cut). For each variant the confidence
threshold maximising pooled F1 on the TRAINING images is chosen, and the validation
images are scored at it (IoU >= 0.5, Hungarian matching), with the mean IoU of the
matched neurons. The variant with the best training F1 is marked: that is the
choice a user without validation labels would make. With several folds (as
`abo_crossval`: --folds, --num_folds), counts are pooled over the folds per variant
and for each fold's own choice.

  python -m experiments.abo_inference_sweep --workdir runs/abo_authors --steps 400 \\
      --val_images 524691284_0+539670003_0 [--margins 0 2 4]
  python -m experiments.abo_inference_sweep --workdir runs/cv400 --steps 400  # 5 folds
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import jax
import numpy as np

from experiments import abo_crossval
from neuroseg_jax import tasks
from neuroseg_jax.evaluation import flip_tta
from neuroseg_jax.evaluation import neuron_matching
from neuroseg_jax.evaluation import yolo_postprocess as post
from neuroseg_jax.tasks import yolo_seg
from neuroseg_jax.training import loop
from neuroseg_jax.training import mesh as mesh_lib

NMS_IOUS = (0.4, 0.5, 0.6, 0.7)
# A margin only hurt on the authors' split (val F1 0.853 / 0.824 / 0.766 at 0 / 2 / 4 px,
# NMS 0.7, RESULTS.md), so it is swept only on request (--margins).
MARGINS = (0.0,)


def network_outputs(predict, samples) -> list[dict]:
  """One image at a time: [{field: array without the batch axis}] per sample."""
  return [{k: np.asarray(v)[0] for k, v in predict({"image": s.image[None]}).items()}
          for s in samples]


def match(outputs: list[dict], samples, settings: post.PostprocessSettings):
  """(ious per image, scores per image) of the post-processed outputs."""
  ious, scores = [], []
  for out, sample in zip(outputs, samples):
    (found,) = post.postprocess_batch({k: v[None] for k, v in out.items()},
                                      [sample.original_hw], [sample.letterbox], settings)
    ious.append(neuron_matching.mask_iou_matrix(found.masks, sample.true_masks))
    scores.append(found.scores)
  return ious, scores


def score_variant(train, val, settings) -> dict:
  """Threshold chosen on the training images, applied to the validation images."""
  (train_outputs, train_samples), (val_outputs, val_samples) = train, val
  threshold, train_counts = neuron_matching.best_confidence_threshold(
      *match(train_outputs, train_samples, settings))
  ious, scores = match(val_outputs, val_samples, settings)
  counts, matched = neuron_matching.Counts(), []
  for iou, s in zip(ious, scores):
    kept = iou[s >= threshold]
    counts = counts + neuron_matching.counts_from_iou(kept)
    pairs = neuron_matching.match_pairs(kept)
    matched.extend(kept[pairs[:, 0], pairs[:, 1]] if len(pairs) else [])
  return {"threshold": threshold, "train_f1": train_counts.f1, "tp": counts.tp,
          "fp": counts.fp, "fn": counts.fn, "precision": counts.precision,
          "recall": counts.recall, "f1": counts.f1, "matched_iou_sum": float(np.sum(matched)),
          "mean_matched_iou": float(np.mean(matched))}


def sweep_split(args, fold: int) -> list[dict]:
  """Every variant of one split (fold `fold`, or the --val_images split), one row each."""
  config = abo_crossval.fold_config(args, fold)
  devices = jax.devices()[:1]
  task = tasks.build(config)
  state = loop.train(task, os.path.join(args.workdir, f"fold{fold}"), devices=devices)
  plain = loop.make_predict_fn(task, state, mesh_lib.make_data_mesh(devices))
  size = config.eval.image_size or config.data.image_size
  train_samples = [yolo_seg.eval_sample(s, size) for s in task.train_samples]
  val_samples = [yolo_seg.eval_sample(s, size) for s in task.val_samples]
  rows = []
  for tta in (False, True):
    predict = flip_tta.with_flips(plain) if tta else plain
    train = (network_outputs(predict, train_samples), train_samples)
    val = (network_outputs(predict, val_samples), val_samples)
    for nms_iou, margin in itertools.product(args.nms_ious, args.margins):
      settings = post.PostprocessSettings(conf_threshold=post.LOW_CONFIDENCE, nms_iou=nms_iou,
                                          mask_margin=margin)
      rows.append({"fold": fold, "images": ";".join(s.name for s in val_samples), "tta": tta,
                   "nms_iou": nms_iou, "mask_margin": margin,
                   **score_variant(train, val, settings)})
      print(json.dumps(rows[-1]), flush=True)
  max(rows, key=lambda r: r["train_f1"])["chosen"] = True
  return rows


def pooled(rows: list[dict]) -> dict:
  counts = neuron_matching.Counts(sum(r["tp"] for r in rows), sum(r["fp"] for r in rows),
                                  sum(r["fn"] for r in rows))
  return {"precision": counts.precision, "recall": counts.recall, "f1": counts.f1,
          "mean_matched_iou": sum(r["matched_iou_sum"] for r in rows) / max(counts.tp, 1)}


def print_rows(rows: list[dict]) -> None:
  print("| fold | flips | NMS IoU | mask margin px | threshold | train F1 | val P | val R | "
        "val F1 | val mean IoU |\n|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    mark = " (chosen on train)" if r.get("chosen") else ""
    print(f"| {r['fold']} | {'yes' if r['tta'] else 'no'} | {r['nms_iou']} | "
          f"{r['mask_margin']:.0f} | {r['threshold']:.2f} | {r['train_f1']:.3f} | "
          f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f}{mark} | "
          f"{r['mean_matched_iou']:.3f} |")


def main(argv=None) -> list[dict]:
  parser = abo_crossval.build_parser(__doc__.split("\n")[0])
  parser.add_argument("--nms_ious", type=float, nargs="+", default=NMS_IOUS)
  parser.add_argument("--margins", type=float, nargs="+", default=MARGINS)
  args = parser.parse_args(argv)
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
  if args.val_images:
    folds = [0]  # the named split
  else:
    folds = [int(f) for f in args.folds.split(",")] if args.folds else range(args.num_folds)
  rows = [row for fold in folds for row in sweep_split(args, fold)]
  print(f"{' '.join([sys.executable, *sys.argv])}")
  print_rows(rows)
  variants = sorted({(r["tta"], r["nms_iou"], r["mask_margin"]) for r in rows})
  print("\npooled over the splits | val P | val R | val F1 | val mean IoU\n|---|---|---|---|---|")
  for variant in variants:
    same = [r for r in rows if (r["tta"], r["nms_iou"], r["mask_margin"]) == variant]
    p = pooled(same)
    print(f"| flips {'yes' if variant[0] else 'no'}, NMS {variant[1]}, margin {variant[2]:.0f} "
          f"| {p['precision']:.3f} | {p['recall']:.3f} | {p['f1']:.3f} | "
          f"{p['mean_matched_iou']:.3f} |")
  p = pooled([r for r in rows if r.get("chosen")])
  print(f"| each split's choice on its training images | {p['precision']:.3f} | "
        f"{p['recall']:.3f} | {p['f1']:.3f} | {p['mean_matched_iou']:.3f} |")
  with open(os.path.join(args.workdir, "inference_sweep.json"), "w") as f:
    json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
