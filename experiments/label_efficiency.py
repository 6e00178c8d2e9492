"""Label efficiency of NeuroSeg-III: fine-tuning from TiCo weights vs from scratch.

For every seed: one TiCo pre-training run on unlabeled images (shared by all
budgets of that seed), then for every label budget (number of labeled training
images) two fine-tuning runs with identical data, steps and seed: from the TiCo
encoder ("tico") and from random weights ("scratch"). Each run picks its
confidence threshold on its own training images and is scored on held-out images
that no run trains on (demo.evaluate_held_out: mask IoU >= 0.5 matching, TP / FP
/ FN pooled over the held-out images).

  --source simulated  the built-in simulator, made harder than the demo's (denser,
      dimmer cells, fewer photons: --sim-args) so that few steps on few labels
      do not saturate. Seed s = replicate s: simulated labeled data set
      s, unlabeled recordings 1000 + 100 s and its own TiCo run. The training seed
      (initialisation, augmentation, drop-path) is --train-seed (default 0, as in
      RESULTS.md, "Label efficiency") for every replicate; --train-seed -1 uses s.
      Budget b = the first b of max(budgets)
      training recordings; the last --held-out recordings are the test set.
  --source abo  the 10 real ABO images (../shared/data/abo275): TiCo on all 10
      images without labels plus windowed max projections of the SIMA example movie
      (transductive: the test images are among the unlabeled images, as in the
      issue's recipe); fine-tuning with the real-data recipe
      (`configs/neuroseg3_seg.py:abo`: scale s, 160 px native-scale crops, batch 8,
      400 steps, whole fields letterboxed to 512 at evaluation) on the first b of
      the training images, tested on --val-images (default: the authors' split,
      524691284_0 and 539670003_0; the same test images for every budget).
      Seed s = training seed s.

Writes WORKDIR/label_efficiency.{csv,json} (one row per run, then the mean / std
over seeds per (init, budget) and the paired per-seed gain tico - scratch) and
label_efficiency.png; tables are rewritten after every run. Each fine-tuning run
stores its row in its workdir (row.json) and is not run again once it has one; an
interrupted run resumes from its last checkpoint. So seeds can run in parallel
processes on one workdir (--seeds 0, --seeds 1, ...) and a last call with all
seeds only builds the tables.

  python experiments/label_efficiency.py --workdir /tmp/label_eff
  python experiments/label_efficiency.py --source abo --workdir /tmp/label_eff_abo
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top

from neuroseg_jax import config_loading  # pylint: disable=g-import-not-at-top
from neuroseg_jax import demo  # pylint: disable=g-import-not-at-top
from neuroseg_jax import demo_settings  # pylint: disable=g-import-not-at-top
from neuroseg_jax import runtime  # pylint: disable=g-import-not-at-top
from neuroseg_jax.data import twophoton_sim  # pylint: disable=g-import-not-at-top
from neuroseg_jax.training import loop  # pylint: disable=g-import-not-at-top
from neuroseg_jax import tasks

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Harder than the demo's simulator defaults (12 cells / 10k px, brightness 0.5-1.5,
# 30 photons per unit), but not so hard that short runs find nothing (the settings
# tried: RESULTS.md, "Label efficiency").
HARDER_SIMULATION = {"cells_per_10k_pixels": 16.0, "brightness_range": [0.4, 1.2],
                     "photons_per_unit": 20.0}
# Native-scale TiCo views of the 487 x 487 ABO fields (5-15% of the area -> 128 px).
ABO_TICO_AUGMENT = ("resized_crop(0.05,0.15,size={size})|flip_lr|flip_ud|rot90|brightness(0.2)"
                    "|contrast(0.2)|gamma(0.7,1.5)|blur(0.5,1.5,p=0.5)|noise(0.05)")
SOURCE_DEFAULTS = {
    "simulated": {"budgets": "1,2,4", "seeds": "0,1,2", "tico_steps": 60, "finetune_steps": 120,
                  "batch_size": 4, "held_out": 3, "train_seed": 0, "scale": "n"},
    "abo": {"budgets": "1,2,4,8", "seeds": "0", "tico_steps": 300, "finetune_steps": 400,
            "batch_size": 8, "train_seed": -1, "scale": "s"},
}
# The authors' validation images (their code reaches F1 0.862 there).
AUTHORS_SPLIT = "524691284_0+539670003_0"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
INITS = ("scratch", "tico")
RUN_COLUMNS = ("source", "seed", "train_seed", "budget", "init", "train_images", "held_out",
               "conf_threshold", "true_neurons", "tp", "fp", "fn", "precision", "recall", "f1",
               "seconds")
SUMMARY_COLUMNS = ("init", "budget", "seeds", "f1_mean", "f1_std", "precision_mean",
                   "recall_mean", "gain_mean", "gain_std", "seeds_tico_better")


# ------------------------------------------------------------------ tables


def _std(values) -> float:
  """Sample standard deviation (ddof 1); 0.0 for a single value."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
  """Per (init, budget): mean / std over seeds of F1 (mean precision, recall); the
  "tico" rows add the paired gain F1(tico) - F1(scratch) over the seeds that have
  both, and on how many of them tico scored higher."""
  by_key = {(r["init"], r["budget"], r["seed"]): r for r in rows}
  summary = []
  for init in INITS:
    for budget in sorted({r["budget"] for r in rows if r["init"] == init}):
      runs = [r for r in rows if r["init"] == init and r["budget"] == budget]
      f1 = [r["f1"] for r in runs]
      entry = {"init": init, "budget": budget, "seeds": len(runs), "f1_mean": float(np.mean(f1)),
               "f1_std": _std(f1),
               "precision_mean": float(np.mean([r["precision"] for r in runs])),
               "recall_mean": float(np.mean([r["recall"] for r in runs]))}
      paired = [r["f1"] - by_key[("scratch", budget, r["seed"])]["f1"]
                for r in runs if init == "tico" and ("scratch", budget, r["seed"]) in by_key]
      if paired:
        entry.update(gain_mean=float(np.mean(paired)), gain_std=_std(paired),
                     seeds_tico_better=int(sum(g > 0 for g in paired)))
      summary.append(entry)
  return summary


def write_tables(workdir: str, rows: list[dict], meta: dict) -> list[dict]:
  """Writes label_efficiency.csv (runs, a blank line, summary) and .json; returns the summary."""
  summary = summarize(rows)
  with open(os.path.join(workdir, "label_efficiency.csv"), "w", newline="") as f:
    for columns, records in ((RUN_COLUMNS, rows), (SUMMARY_COLUMNS, summary)):
      writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
      writer.writeheader()
      writer.writerows(records)
      if columns is RUN_COLUMNS:
        f.write("\n")
  with open(os.path.join(workdir, "label_efficiency.json"), "w") as f:
    json.dump({**meta, "runs": rows, "summary": summary}, f, indent=2)
  return summary


def plot(path: str, rows: list[dict], summary: list[dict], title: str) -> None:
  """F1 vs labeled images: mean +- std band per init, every seed as a dot."""
  fig = mpl_figure.Figure(figsize=(5, 4))
  ax = fig.add_subplot()
  for init, color in zip(INITS, ("tab:gray", "tab:blue")):
    entries = [s for s in summary if s["init"] == init]
    if not entries:
      continue
    budgets = np.array([s["budget"] for s in entries])
    mean = np.array([s["f1_mean"] for s in entries])
    std = np.array([s["f1_std"] for s in entries])
    label = "TiCo pre-trained" if init == "tico" else "from scratch"
    ax.plot(budgets, mean, "o-", color=color, label=label)
    ax.fill_between(budgets, mean - std, mean + std, color=color, alpha=0.2)
    runs = [r for r in rows if r["init"] == init]
    ax.scatter([r["budget"] for r in runs], [r["f1"] for r in runs], s=10, color=color,
               alpha=0.6)
  ax.set_xscale("log", base=2)
  ticks = sorted({entry["budget"] for entry in summary})
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel("labeled training images")
  ax.set_ylabel("held-out F1 (IoU >= 0.5)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title, fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def print_summary(summary: list[dict]) -> None:
  print(f"{'init':>8} {'budget':>6} {'seeds':>5} {'F1 mean':>8} {'F1 std':>7} {'P':>6} {'R':>6}"
        f" {'gain':>7} {'tico>scratch':>12}")
  for s in summary:
    gain = f"{s['gain_mean']:+7.3f}" if "gain_mean" in s else " " * 7
    better = f"{s['seeds_tico_better']}/{s['seeds']}" if "gain_mean" in s else ""
    print(f"{s['init']:>8} {s['budget']:>6} {s['seeds']:>5} {s['f1_mean']:8.3f} "
          f"{s['f1_std']:7.3f} {s['precision_mean']:6.3f} {s['recall_mean']:6.3f} {gain} "
          f"{better:>12}")


# ------------------------------------------------------------------ runs


def training_seed(args, seed: int) -> int:
  return seed if args.train_seed < 0 else args.train_seed


def settings_for(args, seed: int) -> demo_settings.DemoSettings:
  """Demo settings of replicate `seed` (the simulated labeled data set's seed)."""
  return demo_settings.DemoSettings(scale=args.scale, image_size=args.image_size,
                           labeled_recordings=max(args.budgets) + (args.held_out or 0),
                           tico_steps=args.tico_steps, finetune_steps=args.finetune_steps,
                           batch_size=args.batch_size, seed=seed)


def pretrain_config(args, seed: int):
  """demo.tico_config for the source, with seed-specific unlabeled data."""
  folder = args.abo_folder if args.source == "abo" else None
  config = demo.tico_config(settings_for(args, seed), folder)
  config.seed = training_seed(args, seed)
  if args.source == "abo":
    config.data.source += f"+movie:{args.sima_movie}"
    config.data.image_size = args.image_size
    config.data.augment = ABO_TICO_AUGMENT.format(size=args.image_size)
  else:
    config.data.seed = 1000 + 100 * seed
    config.data.simulator.update(args.sim_args)
  return config


def finetune_config(args, seed: int, budget: int, pretrained: str):
  """The fine-tuning run of `budget` labeled images: the demo's (simulated) or the
  real-data recipe's (abo), tested on the held-out images."""
  if args.source == "abo":
    config = config_loading.load_config(
        f"{CONFIGS / 'neuroseg3_seg.py'}:abo,folder={args.abo_folder},scale={args.scale},"
        f"num_train={budget},val_images={args.val_images},num_steps={args.finetune_steps},"
        f"batch_size={args.batch_size},seed={training_seed(args, seed)},pretrained={pretrained}")
    config.eval_every = 0
    return config
  config = demo.finetune_config(settings_for(args, seed), None, pretrained)
  config.seed = training_seed(args, seed)
  config.data.num_train = budget
  config.data.num_val = args.held_out
  config.data.source_args.update(args.sim_args)
  return config


def row_path(args, seed: int, init: str, budget: int) -> str:
  return os.path.join(args.workdir, f"seed{seed}", f"{init}_b{budget}", "row.json")


def finetune_and_score(args, seed: int, budget: int, init: str, tico_dir: str) -> dict:
  """The table row of one fine-tuning run, stored as its workdir's row.json; a run that
  has one is not run again (so processes running disjoint --seeds can share a workdir
  and a last call with all seeds only builds the tables)."""
  path = row_path(args, seed, init, budget)
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  workdir = os.path.dirname(path)
  config = finetune_config(args, seed, budget, tico_dir if init == "tico" else "")
  start = time.time()
  task = tasks.build(config)
  state = loop.train(task, workdir, devices=jax.devices()[:1])
  result = demo.evaluate_held_out(task, state, workdir)
  row = {"source": args.source, "seed": seed, "train_seed": config.seed, "budget": budget,
         "init": init, "train_images": config.data.num_train, **result,
         "held_out": ";".join(result["held_out"]), "seconds": round(time.time() - start, 1)}
  with open(path, "w") as f:
    json.dump(row, f, indent=2)
  return row


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--source", choices=sorted(SOURCE_DEFAULTS), default="simulated")
  parser.add_argument("--budgets", help="labeled training images, comma-separated "
                      "(simulated 1,2,4; abo 1,2,4,8)")
  parser.add_argument("--seeds", help="comma-separated (simulated 0,1,2; abo 0)")
  parser.add_argument("--tico-steps", type=int)
  parser.add_argument("--finetune-steps", type=int)
  parser.add_argument("--batch-size", type=int)
  parser.add_argument("--held-out", type=int, help="simulated test recordings (3)")
  parser.add_argument("--val-images", default=AUTHORS_SPLIT,
                      help="abo test images, names joined by '+' (default: the authors' split)")
  parser.add_argument("--train-seed", type=int, help="training seed of every replicate; "
                      "-1: the replicate's seed (simulated 0; abo -1)")
  parser.add_argument("--image-size", type=int, default=128,
                      help="TiCo view size; simulated: also field and crop size (abo "
                      "crops are the recipe's)")
  parser.add_argument("--scale", help="network scale (simulated n; abo s, the recipe's)")
  parser.add_argument("--sim-args", type=json.loads, default=HARDER_SIMULATION,
                      help="JSON dict of twophoton_sim.SimulationConfig fields")
  parser.add_argument("--abo-folder", default=str(SHARED_DATA / "abo275"))
  parser.add_argument("--sima-movie", default=str(SHARED_DATA / "sima_movie" / "example.tif"))
  parser.add_argument("--cache-dir", help="XLA compilation cache (default WORKDIR/xla_cache)")
  args = parser.parse_args(argv)
  for key, value in SOURCE_DEFAULTS[args.source].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.budgets = [int(b) for b in str(args.budgets).split(",")]
  args.seeds = [int(s) for s in str(args.seeds).split(",")]
  fields = {f.name for f in dataclasses.fields(twophoton_sim.SimulationConfig)}
  unknown = set(args.sim_args) - fields
  if unknown:
    parser.error(f"--sim-args: {sorted(unknown)} are not SimulationConfig fields")
  return args


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  runtime.keep_freed_memory(calls_in_order=True)  # as training runs do (neuroseg_jax.main)
  os.makedirs(args.workdir, exist_ok=True)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  # Runs of one model compile the same train steps: reuse them from disk.
  jax.config.update("jax_compilation_cache_dir",
                    args.cache_dir or os.path.join(args.workdir, "xla_cache"))
  meta = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args),
          "seconds": 0.0}
  start, rows = time.time(), []
  for seed in args.seeds:
    tico_dir = os.path.join(args.workdir, f"seed{seed}", "tico")
    tico_start = time.time()
    if not all(os.path.isfile(row_path(args, seed, i, b)) for i in INITS for b in args.budgets):
      loop.train(tasks.build(pretrain_config(args, seed)), tico_dir, devices=jax.devices()[:1])
    print(f"seed {seed}: TiCo pre-training {time.time() - tico_start:.0f} s", flush=True)
    for budget in args.budgets:
      for init in INITS:
        row = finetune_and_score(args, seed, budget, init, tico_dir)
        rows.append(row)
        print(f"seed {seed} budget {budget} {init:>7}: P {row['precision']:.3f} "
              f"R {row['recall']:.3f} F1 {row['f1']:.3f} ({row['tp']}/{row['true_neurons']}, "
              f"{row['fp']} FP, {row['seconds']:.0f} s)", flush=True)
        meta["seconds"] = round(time.time() - start, 1)
        summary = write_tables(args.workdir, rows, meta)
  plot(os.path.join(args.workdir, "label_efficiency.png"), rows, summary,
       f"{args.source}: {args.finetune_steps} fine-tuning steps, TiCo {args.tico_steps} steps")
  print(meta["command"])
  print_summary(summary)
  return rows


if __name__ == "__main__":
  main()
