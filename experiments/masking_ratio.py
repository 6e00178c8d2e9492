"""Masking-ratio study: MAE pre-training at several ratios under one budget and seed.

  python experiments/masking_ratio.py --config=configs/mae3d_pretrain.py:cpu --out=/tmp/mask_study
  python experiments/masking_ratio.py --config=configs/mae3d_pretrain.py:cpu,tomo --out=DIR \
      --finetune=configs/unetr3d_finetune.py:smoke,size=mu,patch_size=1x8x8,crop=4x32x32
  python -m experiments.masking_ratio --config=configs/mae2d_pretrain.py:isbi --out=DIR \
      --finetune=configs/em2d_boundary.py:isbi,unetr      (real EM: ISBI 2012, issue 15)
  python -m experiments.masking_ratio --config=configs/mae2d_pretrain.py:isbi,num_steps=4500 \
      --out=DIR --finetune=configs/em2d_boundary.py:isbi,unetr --layer-decay=0.75

Each point is the config with `mask_ratio=R` appended to its argument, so it is
also runnable alone:
  python -m neuroseg_jax.main --config=configs/mae3d_pretrain.py:cpu,mask_ratio=0.5 --workdir=DIR
Every point shares the config's seed, data, steps and batch size. Per ratio the
table records the validation masked reconstruction loss (norm-pix or plain, as
configured), the same loss of predicting the mean target (the baseline a model
must beat), their quotient, the last logged training loss, the wall time and the
CPU time of this call (small for a run reused from an earlier call) and the wall
time of the training steps from the run's metrics (the same whether reused or not).
With --finetune the given UNETR fine-tuning config is run once from scratch and
once per ratio with `pretrained=<that ratio's workdir>` (plus `layer_decay=<--layer-decay>`
when given; its ViT size, patch and class token must match the MAE's), and its final
val/* scores are added (an EM slice run that was evaluated under other settings is
evaluated again: `slice_runs.py`).

Writes OUT/masking_ratio.csv, OUT/masking_ratio.json and OUT/masking_ratio.png;
each run's workdir is OUT/ratio_<R> (a finished run is reused, not retrained).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import jax
from matplotlib import figure as mpl_figure

import neuroseg_jax.tasks.mae_pretrain  # noqa: F401  (registers "mae_pretrain")
from experiments import slice_runs
from neuroseg_jax import config_loading
from neuroseg_jax.training import loop
from neuroseg_jax import tasks


SCORE_NAMES = ("arand", "voi", "ap50", "ap75", "dice", "iou")


def with_args(spec: str, extra: str) -> str:
  """"configs/x.py:a,b" + "c=1" -> "configs/x.py:a,b,c=1"."""
  path, _, arg = spec.partition(":")
  return f"{path}:{arg},{extra}" if arg else f"{path}:{extra}"


def pretrained_spec(finetune: str, mae_workdir: str, layer_decay: float) -> str:
  """The fine-tuning spec from one MAE run; layer_decay is added only when it is not 1, so
  fine-tuning configs without that field still load."""
  decay = f",layer_decay={layer_decay}" if layer_decay != 1.0 else ""
  return with_args(finetune, f"pretrained={mae_workdir}{decay}")


def last_values(records: list[dict], prefix: str) -> dict:
  """The latest logged value of every metric whose name starts with `prefix`."""
  values = {}
  for record in records:
    values.update({k: v for k, v in record.items() if k.startswith(prefix)})
  return values


def train(spec: str, workdir: str) -> tuple[list[dict], float, float]:
  """Runs (or resumes, or reuses when finished) one config; returns (metrics, wall seconds,
  CPU seconds of this process, all threads)."""
  config = config_loading.load_config(spec)
  start, cpu = time.time(), time.process_time()
  loop.train(tasks.build(config), workdir, devices=jax.devices()[:1])
  return loop.read_metrics(workdir), time.time() - start, time.process_time() - cpu


def finetune_scores(spec: str, workdir: str) -> dict:
  """Trains (or reuses) the fine-tuning run; its final val/* scores as finetune_val/*. An EM
  slice run's come from its evaluation JSON, evaluated again when it predates the
  config's evaluation settings (`slice_runs.slice_scores`)."""
  config = config_loading.load_config(spec)
  task = tasks.build(config)
  state = loop.train(task, workdir, devices=jax.devices()[:1])
  if config.task == "em_slice_boundary":
    scores = slice_runs.slice_scores(task, state, workdir)
    scores = {**{k: v for k, v in scores.items() if k.startswith("val/")},
              **{f"val/{k}": v for k, v in scores["watershed"].items()}}
  else:
    scores = last_values(loop.read_metrics(workdir), "val/")
  return {f"finetune_{k}": v for k, v in scores.items()}


def run_ratio(args, ratio: float) -> dict:
  workdir = os.path.join(args.out, f"ratio_{ratio}")
  records, seconds, cpu_seconds = train(with_args(args.config, f"mask_ratio={ratio}"), workdir)
  val = last_values(records, "val/")
  row = {"mask_ratio": ratio,
         "val_reconstruction_loss": val["val/reconstruction_loss"],
         "val_mean_baseline": val["val/mean_baseline"],
         "val_loss_over_baseline": val["val/loss_over_baseline"],
         "final_train_loss": last_values(records, "train/loss")["train/loss"],
         "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
         "train_seconds": round(loop.training_seconds(workdir), 1),
         "workdir": workdir}
  if args.finetune:
    spec = pretrained_spec(args.finetune, workdir, args.layer_decay)
    row.update(finetune_scores(spec, os.path.join(workdir, "finetune")))
  print(json.dumps(row), flush=True)
  return row


def save_plot(path: str, rows: list[dict], scratch: dict | None) -> None:
  """Reconstruction loss and baseline vs ratio; fine-tuning scores in a second panel if any."""
  ratios = [r["mask_ratio"] for r in rows]
  # Scores only: post-processing choices (val/waterz_threshold, val/seed_threshold...)
  # are not plotted.
  scores = sorted(k for k in rows[0] if k.startswith("finetune_")
                  and any(name in k for name in SCORE_NAMES))
  fig = mpl_figure.Figure(figsize=(5 * (1 + bool(scores)), 4))
  axes = fig.subplots(1, 1 + bool(scores), squeeze=False)[0]
  axes[0].plot(ratios, [r["val_reconstruction_loss"] for r in rows], "o-", label="MAE")
  axes[0].plot(ratios, [r["val_mean_baseline"] for r in rows], "ks--", label="predict the mean")
  axes[0].set(xlabel="masking ratio", ylabel="validation masked reconstruction loss")
  axes[0].legend()
  for name in scores:
    line = axes[1].plot(ratios, [r[name] for r in rows], "o-", label=name[len("finetune_"):])
    if scratch and name in scratch:
      axes[1].axhline(scratch[name], ls=":", color=line[0].get_color())
  if scores:
    axes[1].set(xlabel="masking ratio", ylabel="fine-tuned score (dotted: from scratch)")
    axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/mae3d_pretrain.py:cpu")
  parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
  parser.add_argument("--finetune", default="", help="UNETR fine-tuning config spec (optional)")
  parser.add_argument("--layer-decay", type=float, default=1.0,
                      help="fine-tuning from each MAE: ViT block k from the top learns at "
                      "lr * decay**k (the scratch run keeps the spec's; default 1 = off)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)

  rows = [run_ratio(args, ratio) for ratio in args.ratios]
  scratch = None
  if args.finetune:
    scratch = finetune_scores(args.finetune, os.path.join(args.out, "finetune_scratch"))
  result = {"config": args.config, "finetune": args.finetune, "rows": rows, "scratch": scratch}
  with open(os.path.join(args.out, "masking_ratio.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(args.out, "masking_ratio.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  save_plot(os.path.join(args.out, "masking_ratio.png"), rows, scratch)
  print(f"wrote {args.out}/masking_ratio.csv, .json, .png")


if __name__ == "__main__":
  main()
