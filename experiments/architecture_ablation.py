"""Architecture ablation of NeuroSeg-III: every combination the paper ablates, one budget.

Rows (model block, neck): YOLOv8s-seg baseline (c2f, pan); + FasterNet blocks
(c2f_faster, pan); + EMA attention (c2f_faster_ema, pan); + BiFPN (c2f, bifpn);
NeuroSeg-III (c2f_faster_ema, bifpn). Each row and training seed trains
`configs/neuroseg3_seg.py:block=...,neck=...` (the `config` column holds the exact
argument, runnable alone with `python -m neuroseg_jax.main`) with the same steps,
batch, data and data split; only the training seed changes between seeds (the
simulated data keep --data_seed). Scores come from
abo_crossval.train_and_score: confidence threshold tuned on the training images,
precision / recall / F1 on the held-out images at that threshold.

Columns: params; GFLOPs per image at 640 x 640 (2 x MACs of convolutions and
matrix products incl. DFL decoding, `reference/profiling.py`, comparable to the
paper's table) and at the evaluation size; train images/s (median of the
engine's `examples_per_sec` records after the first, which holds the compile);
forward ms / image at the evaluation size (network only, compiled, batch
--eval_batch_size); precision, recall, F1 and mask mAP50 as mean and std over
seeds. Writes WORKDIR/ablation.csv, ablation.json and ablation.png.

  python -m experiments.architecture_ablation --workdir /tmp/ablation --num_steps 60 --seeds 1
  python -m experiments.architecture_ablation --workdir /tmp/ablation_abo --source abo
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top

from experiments import abo_crossval  # pylint: disable=g-import-not-at-top
from neuroseg_jax import config_loading  # pylint: disable=g-import-not-at-top
from neuroseg_jax import runtime  # pylint: disable=g-import-not-at-top
from neuroseg_jax.models import yolo_seg  # pylint: disable=g-import-not-at-top
from neuroseg_jax.reference import profiling  # pylint: disable=g-import-not-at-top
from neuroseg_jax.training import loop  # pylint: disable=g-import-not-at-top

ROWS = (("YOLOv8s-seg", "c2f", "pan"), ("+FasterNet", "c2f_faster", "pan"),
        ("+EMA", "c2f_faster_ema", "pan"), ("+BiFPN", "c2f", "bifpn"),
        ("NeuroSeg-III", "c2f_faster_ema", "bifpn"))
SCORES = ("precision", "recall", "f1", "map50")
RUN_KEYS = ("threshold", "train_f1", "tp", "fp", "fn", "precision", "recall", "f1", "map50",
            "map50_95", "oracle_f1", "train_images_per_s", "forward_ms_per_image")


def config_arg(args, block: str, neck: str) -> str:
  """The `configs/neuroseg3_seg.py:...` argument of one row (data seed, not training seed)."""
  common = (f"block={block},neck={neck},scale={args.scale},num_steps={args.num_steps},"
            f"batch_size={args.batch_size},image_size={args.image_size},"
            f"eval_image_size={args.eval_image_size},lr={args.lr},nms_iou={args.nms_iou}")
  if args.source == "abo":  # the variant adds the recipe's native-scale crops
    return f"abo,source=abo,fold={args.fold},{common}"
  return (f"source=simulated,seed={args.data_seed},height={args.height},width={args.width},"
          f"num_recordings={args.num_recordings},frames={args.frames},"
          f"num_val={args.num_val},{common}")


def run_config(args, block: str, neck: str, seed: int):
  config = config_loading.load_config(f"{abo_crossval.CONFIG}:{config_arg(args, block, neck)}")
  config.seed = seed  # training seed; the simulated data keep args.data_seed
  config.eval_every = 0
  config.eval.batch_size = args.eval_batch_size
  config.eval.figures = False
  return config


def train_images_per_second(workdir: str) -> float:
  rates = [r["examples_per_sec"] for r in loop.read_metrics(workdir) if "examples_per_sec" in r]
  return float(np.median(rates[1:] if len(rates) > 1 else rates))


def model_costs(config) -> dict:
  """Params and trace-only GFLOPs (no compile) at 640 and at the evaluation size."""
  model = yolo_seg.build_yolo_seg({**config.model.to_dict(), "dtype": config.compute_dtype})
  eval_size = config.eval.image_size or config.data.image_size
  at_640 = profiling.profile(model, 640, with_xla=False)
  return {"params": at_640["params"], "gflops_640": at_640["matmul_gflops"],
          "gflops_eval": profiling.profile(model, eval_size, with_xla=False)["matmul_gflops"]}


def run_row(args, name: str, block: str, neck: str, devices) -> dict:
  runs = []
  for seed in range(args.seeds):
    config = run_config(args, block, neck, seed)
    workdir = os.path.join(args.workdir, f"{block}_{neck}_seed{seed}")
    result = abo_crossval.train_and_score(config, workdir, devices)
    result["train_images_per_s"] = train_images_per_second(workdir)
    runs.append(result)
    print(f"{name} seed {seed}: P {result['precision']:.3f} R {result['recall']:.3f} "
          f"F1 {result['f1']:.3f} ({result['train_seconds']:.0f} s)", flush=True)
  row = {"model": name, "block": block, "neck": neck,
         "config": f"configs/neuroseg3_seg.py:{config_arg(args, block, neck)}",
         **model_costs(config), "seeds": args.seeds,
         "train_images_per_s": float(np.mean([r["train_images_per_s"] for r in runs])),
         "forward_ms_per_image": float(np.mean([r["forward_ms_per_image"] for r in runs]))}
  for key in SCORES:
    values = [r[key] for r in runs]
    row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
  row["runs"] = [{key: r[key] for key in RUN_KEYS} for r in runs]
  return row


def plot(rows: list[dict], path: str) -> None:
  fig = mpl_figure.Figure(figsize=(11, 4))
  names = [r["model"] for r in rows]
  x = np.arange(len(rows))
  axes = fig.add_subplot(1, 3, 1)
  for offset, key in zip((-0.25, 0, 0.25), ("precision", "recall", "f1")):
    axes.bar(x + offset, [r[f"{key}_mean"] for r in rows], 0.25,
             yerr=[r[f"{key}_std"] for r in rows], label=key, capsize=3)
  axes.set_ylim(0, 1)
  axes.legend(fontsize=8)
  axes.set_title(f"held-out neurons (mean ± std, {rows[0]['seeds']} seed(s))", fontsize=9)
  for index, (key, title) in enumerate((("params", "parameters (M)"),
                                        ("gflops_640", "GFLOPs / image at 640")), start=2):
    axes_i = fig.add_subplot(1, 3, index)
    scale = 1e6 if key == "params" else 1.0
    axes_i.bar(x, [r[key] / scale for r in rows], color="grey")
    axes_i.set_title(title, fontsize=9)
  for axes_i in fig.axes:
    axes_i.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


COLUMNS = ("model", "block", "neck", "params", "gflops_640", "gflops_eval",
           "train_images_per_s", "forward_ms_per_image", "precision_mean", "precision_std",
           "recall_mean", "recall_std", "f1_mean", "f1_std", "map50_mean", "map50_std", "seeds",
           "config")


def print_table(rows: list[dict]) -> None:
  print(f"{'model':>13} {'params':>9} {'GF@640':>7} {'GF@eval':>7} {'img/s':>6} {'ms/img':>7} "
        f"{'P':>13} {'R':>13} {'F1':>13} {'mAP50':>6}")
  for r in rows:
    spread = lambda k: f"{r[k + '_mean']:.3f}±{r[k + '_std']:.3f}"
    print(f"{r['model']:>13} {r['params']:9d} {r['gflops_640']:7.2f} {r['gflops_eval']:7.2f} "
          f"{r['train_images_per_s']:6.2f} {r['forward_ms_per_image']:7.1f} "
          f"{spread('precision'):>13} {spread('recall'):>13} {spread('f1'):>13} "
          f"{r['map50_mean']:6.3f}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--source", choices=("simulated", "abo"), default="simulated")
  parser.add_argument("--seeds", type=int, default=1, help="training seeds per row")
  parser.add_argument("--rows", default="", help="comma-separated row indices (default all)")
  parser.add_argument("--num_steps", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--eval_image_size", type=int, default=0, help="0: the training size "
                      "(simulated); use 512 for whole ABO fields")
  parser.add_argument("--eval_batch_size", type=int, default=2)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--scale", default="s")
  parser.add_argument("--nms_iou", type=float, default=0.7,
                      help="evaluation box NMS (0.7: as in the recorded ablation)")
  parser.add_argument("--fold", type=int, default=0, help="ABO fold (of 5) held out")
  parser.add_argument("--data_seed", type=int, default=0, help="simulated data")
  parser.add_argument("--height", type=int, default=256, help="simulated field")
  parser.add_argument("--width", type=int, default=256, help="simulated field")
  parser.add_argument("--num_recordings", type=int, default=12, help="simulated")
  parser.add_argument("--frames", type=int, default=200, help="simulated, per recording")
  parser.add_argument("--num_val", type=int, default=2)
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
  devices = jax.devices()[:1]
  chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
  rows = [run_row(args, *row, devices) for row in chosen]
  meta = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args),
          "hardware": runtime.hardware_description()}
  with open(os.path.join(args.workdir, "ablation.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
    json.dump({**meta, "rows": rows}, f, indent=2)
  plot(rows, os.path.join(args.workdir, "ablation.png"))
  print(f"{meta['command']}\n{meta['hardware']}")
  print_table(rows)
  return rows


if __name__ == "__main__":
  main()
