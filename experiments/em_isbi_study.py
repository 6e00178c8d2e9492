"""ISBI 2012 serial-section EM: classical vs U-Net vs UNETR (scratch / MAE) per label count.

  python -m experiments.em_isbi_study --out=DIR                       # the table in RESULTS.md
  python -m experiments.em_isbi_study --out=DIR --labels 2 5 15 --seeds 0 1 2 --steps 400
  python -m experiments.em_isbi_study --out=DIR --methods unetr unetr_mae --patch-size 8x8 \
      --mae-steps 4500 --layer-decay 0.75
  python -m experiments.em_isbi_study --out=DIR --methods unetr unetr_mae --tune-folds 2 \
      --mae-steps 4500 --layer-decay 0.75

Every method is trained on the first N labeled slices (0..N-1) and scored on slices
15-19 (adapted Rand error and VOI split / merge per slice, mean; ground truth = the
4-connected components of the cell interior, membrane ignored), with its watershed
parameters tuned on its own training slices (`evaluation/slice_evaluator.py`):
  classical   dark-ridge map + the same watershed, wider grid (`evaluation/em_classical.py`)
  unet        configs/em2d_boundary.py:isbi,unet (from scratch)
  unetr       configs/em2d_boundary.py:isbi,unetr (from scratch)
  unetr_mae   the same UNETR, encoder from MAE pre-training
              (configs/mae2d_pretrain.py:isbi at --mask-ratio, run once in DIR/ratio_R,
              where experiments/masking_ratio.py --out=DIR finds and reuses it),
              fine-tuned with layer-wise learning-rate decay --layer-decay (1 = off);
              --patch-size (both UNETRs and the MAE), --mae-steps and --mae-match-noise
              (the MAE's slices blurred to the noise of labeled 0-14) vary the MAE
With --tune-folds K, each network's row also holds its scores with the watershed tuned
out of fold ("oof/..."; K fold runs per row, DIR/<run>_fold{k}, `slice_runs.py`), the
protocol `neuroseg-jax train-em --tune-folds` ships; rows without them are completed.
Every method's input slices are blurred to the noise level of its training slices
first (`data/noise_matching.py`; slices 15-19 are 3x noisier than 0-14), unless
--no-match-noise. Runs are resumable and a finished run is reused. Rows are named by
their run's config, so a DIR can hold several MAEs (e.g. --mask-ratio 0.25 beside the
default 0.75), decays or budgets side by side; the table gives each its own line. Writes
DIR/em_isbi_study.json (rows with and without noise matching side by side) and prints
a Markdown table of the rows as asked; wall and CPU seconds (this process, all threads)
per run, and the training steps' wall time from the run's metrics. A finished run whose
evaluation predates the current watershed grid, or matched noise otherwise than asked,
is evaluated again from its final checkpoint (`slice_runs.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time

import jax
import numpy as np

from experiments import slice_runs
from experiments.masking_ratio import train
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.data import em_labels, em_volumes, intensity, noise_matching
from neuroseg_jax.evaluation import em_classical, slice_segmentation
from neuroseg_jax.training import loop

ISBI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "isbi2012", "train")
VAL = list(range(15, 20))
METHODS = ("classical", "unet", "unetr", "unetr_mae")
PATCH = "16x16"  # configs/em2d_boundary.py's and configs/mae2d_pretrain.py:isbi's
CLASSICAL = "evaluation/em_classical.py"  # the classical rows' "config"


def classical(labeled: int, match_noise: bool) -> dict:
  images = em_volumes.open_volume(os.path.join(ISBI, "image"))
  labels = em_labels.open_labels(os.path.join(ISBI, "label"))
  stack = images[:]
  if match_noise:  # the same input as the networks see: blurred to the training slices' noise
    stack, _ = noise_matching.match_slices(
        stack, noise_matching.stack_noise_level(stack[:labeled]))
  ridge = em_classical.dark_ridge_map(stack, intensity.intensity_stats(images))
  gt = labels[:]
  params, table = slice_segmentation.tune_watershed(ridge[:labeled], gt[:labeled],
                                                    em_classical.CLASSICAL_GRID)
  scores = slice_segmentation.slice_scores(
      gt[VAL], slice_segmentation.watershed_slices(ridge[VAL], params))
  return {**{f"val/{k}": v for k, v in slice_segmentation.mean_scores(scores).items()},
          "train/arand": table[params], "watershed": dataclasses.asdict(params)}


def mae_workdir(args) -> str:
  """DIR/ratio_R, plus _patchP / _matched / _stepsN for settings other than
  configs/mae2d_pretrain.py:isbi's."""
  name = f"ratio_{args.mask_ratio}"
  name += f"_patch{args.patch_size}" if args.patch_size != PATCH else ""
  name += "_matched" if args.mae_match_noise else ""
  return os.path.join(args.out, name + (f"_steps{args.mae_steps}" if args.mae_steps else ""))


def pretrain(args) -> dict:
  """The MAE run unetr_mae starts from (reused when finished): its time and final loss."""
  spec = (f"configs/mae2d_pretrain.py:isbi,mask_ratio={args.mask_ratio},"
          f"patch_size={args.patch_size}")
  spec += f",num_steps={args.mae_steps}" if args.mae_steps else ""
  if args.mae_match_noise:  # its volume: the unlabeled slices, then labeled 0-19
    unlabeled = em_volumes.open_volume(os.path.join(ISBI, "..", "unlabeled")).shape[0]
    spec += f",match_noise_to={unlabeled}-{unlabeled + VAL[0] - 1}"
  records, seconds, cpu_seconds = train(spec, mae_workdir(args))
  loss = [r["val/reconstruction_loss"] for r in records if "val/reconstruction_loss" in r]
  return {"method": "mae_pretraining", "mae_run": os.path.basename(mae_workdir(args)),
          "mask_ratio": args.mask_ratio,
          "patch_size": args.patch_size, "num_steps": records[-1]["step"],
          "val/reconstruction_loss": loss[-1], "seconds": round(seconds, 1),
          "cpu_seconds": round(cpu_seconds, 1)}


def run_spec(method: str, labeled: int, seed: int, args) -> str:
  """The config spec of a network row's run; it also names the row in the study's JSON, so
  rows of another MAE, decay or budget are never taken for this one."""
  if method == "classical":
    return CLASSICAL
  spec = (f"configs/em2d_boundary.py:isbi,{'unet' if method == 'unet' else 'unetr'},"
          f"train_slices=0-{labeled - 1},seed={seed},num_steps={args.steps},"
          f"match_noise={args.match_noise}")
  if method != "unet":
    spec += f",patch_size={args.patch_size}"
  if method == "unetr_mae":
    spec += f",pretrained={mae_workdir(args)},layer_decay={args.layer_decay}"
  return spec


def network_run(method: str, labeled: int, seed: int, args) -> tuple:
  """(task, final state, workdir, config spec) of a network row's run, trained unless
  finished."""
  spec = run_spec(method, labeled, seed, args)
  workdir = os.path.join(args.out, f"{method}_n{labeled}_s{seed}")
  if (method == "unetr_mae" and (labeled, seed) == (15, 0) and args.layer_decay == 1.0
      and args.patch_size == PATCH):
    # The masking-ratio study's fine-tuning run of this ratio is this very run.
    workdir = os.path.join(mae_workdir(args), "finetune")
  task = tasks.build(config_loading.load_config(spec))
  return task, loop.train(task, workdir, devices=jax.devices()[:1]), workdir, spec


def timed(fn, *args) -> tuple:
  """(fn(*args), wall seconds, CPU seconds of this process, all threads)."""
  start, cpu = time.time(), time.process_time()
  result = fn(*args)
  return result, round(time.time() - start, 1), round(time.process_time() - cpu, 1)


def network_columns(run: tuple, run_seconds: float, run_cpu_seconds: float) -> dict:
  """A new row's scores of its run (`network_run`'s tuple; training took the given time)."""
  task, state, workdir, spec = run
  scores, seconds, cpu_seconds = timed(slice_runs.slice_scores, task, state, workdir)
  return {"config": spec, **scores, "train_seconds": round(loop.training_seconds(workdir), 1),
          "seconds": run_seconds + seconds, "cpu_seconds": run_cpu_seconds + cpu_seconds}


def out_of_fold_columns(run: tuple, folds: int) -> dict:
  """The row's "oof/..." scores (`slice_runs.out_of_fold_scores`), timed on their own."""
  task, state, workdir, _ = run
  columns, seconds, cpu_seconds = timed(slice_runs.out_of_fold_scores, task, state, workdir,
                                        folds)
  return {**columns, "oof/seconds": seconds, "oof/cpu_seconds": cpu_seconds}


def wants_out_of_fold(row: dict, args) -> bool:
  return (bool(args.tune_folds) and row["method"] != "classical"
          and row.get("oof/folds") != args.tune_folds)


def fill_row(row: dict, args) -> None:
  """Adds the scores a row lacks: all of them for a new row, else the out-of-fold ones."""
  method, labeled = row["method"], row["labeled"]
  if method == "classical":
    scores, seconds, cpu_seconds = timed(classical, labeled, args.match_noise)
    row.update(**scores, seconds=seconds, cpu_seconds=cpu_seconds)
    return
  run, seconds, cpu_seconds = timed(network_run, method, labeled, row["seed"], args)
  if "val/arand" not in row:  # new: trained just now (or finished and only loaded)
    row.update(network_columns(run, seconds, cpu_seconds))
  if wants_out_of_fold(row, args):
    row.update(out_of_fold_columns(run, args.tune_folds))


def row_key(row: dict) -> tuple:
  """What names a row: its run's config, with the MAE run by its folder name only (so a
  study folder can move or be named by a relative path)."""
  config = re.sub(r"pretrained=[^,]*[/\\]", "pretrained=", row.get("config", ""))
  return row["method"], row.get("labeled"), row.get("seed"), row.get("match_noise", False), \
      config


def row_label(row: dict) -> str:
  """The method, and for an MAE row the MAE run it started from: `unetr_mae (ratio_0.25)`."""
  pretrained = re.search(r"pretrained=([^,]+)", row.get("config", ""))
  return row["method"] + (f" ({os.path.basename(pretrained[1])})" if pretrained else "")


def table(rows: list[dict], match_noise: bool) -> str:
  """The Markdown table of the rows with this noise matching."""
  lines = ["| method | labeled slices | seeds | ARAND (mean +- sd) | VOI split | VOI merge | "
           "ARAND, watershed tuned out of fold | ARAND, watershed tuned on val (oracle) | "
           "wall min / run | CPU min / run |", "|---|---|---|---|---|---|---|---|---|---|"]
  rows = [r for r in rows
          if r["method"] in METHODS and r.get("match_noise", False) == match_noise]
  keys = sorted({(row_label(r), r["labeled"]) for r in rows},
                key=lambda k: (k[1], METHODS.index(k[0].split()[0]), k[0]))
  for label, labeled in keys:
    group = [r for r in rows if (row_label(r), r["labeled"]) == (label, labeled)]
    arand = np.array([r["val/arand"] for r in group])
    oracle = [r.get("val/arand_oracle") for r in group]
    oracle_text = "-" if None in oracle else f"{np.mean(oracle):.4f}"
    oof = np.array([r.get("oof/arand", np.nan) for r in group])
    oof_text = "-" if np.isnan(oof).any() else f"{oof.mean():.4f} +- {oof.std():.4f}"
    lines.append(
        f"| {label} | {labeled} | {len(group)} | {arand.mean():.4f} +- {arand.std():.4f} | "
        f"{np.mean([r['val/voi_split'] for r in group]):.3f} | "
        f"{np.mean([r['val/voi_merge'] for r in group]):.3f} | {oof_text} | {oracle_text} | "
        f"{np.mean([r['seconds'] for r in group]) / 60:.1f} | "
        f"{np.mean([r['cpu_seconds'] for r in group]) / 60:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--labels", type=int, nargs="+", default=[15, 5, 2])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--mask-ratio", type=float, default=0.75)
  parser.add_argument("--patch-size", default=PATCH,
                      help="the ViT's patch for MAE and both UNETRs, written like 8x8")
  parser.add_argument("--mae-steps", type=int, default=0,
                      help="MAE pre-training steps (default: configs/mae2d_pretrain.py:isbi's)")
  parser.add_argument("--mae-match-noise", action="store_true",
                      help="MAE on slices blurred to the noise level of labeled slices 0-14 "
                           "(the unlabeled slices are 3x noisier)")
  parser.add_argument("--layer-decay", type=float, default=1.0,
                      help="unetr_mae fine-tuning: ViT block k from the top learns at lr * "
                           "decay**k (default 1 = off)")
  parser.add_argument("--tune-folds", type=int, default=0, metavar="K",
                      help="also score every network with its watershed tuned on out-of-fold "
                           "maps of its training slices (K more runs each; default 0 = off)")
  parser.add_argument("--no-match-noise", dest="match_noise", action="store_false",
                      help="predict noisy slices as stored (default: blurred to the training "
                           "slices' noise level, data/noise_matching.py)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  result_path = os.path.join(args.out, "em_isbi_study.json")
  rows = json.load(open(result_path)) if os.path.exists(result_path) else []
  by_key = {row_key(r): r for r in rows}
  mae_run = os.path.basename(mae_workdir(args))
  if "unetr_mae" in args.methods and not any(r.get("mae_run") == mae_run for r in rows):
    rows.append(pretrain(args))  # timed on its own, not inside the first fine-tuning run
    print(json.dumps(rows[-1]), flush=True)
  for labeled in args.labels:
    for method in args.methods:
      for seed in args.seeds if method != "classical" else [0]:
        row = {"method": method, "labeled": labeled, "seed": seed,
               "match_noise": args.match_noise,
               "config": run_spec(method, labeled, seed, args)}
        if row_key(row) not in by_key:
          by_key[row_key(row)] = row
          rows.append(row)
        elif not wants_out_of_fold(by_key[row_key(row)], args):
          continue
        row = by_key[row_key(row)]
        fill_row(row, args)
        print(json.dumps(row), flush=True)
        with open(result_path, "w") as f:
          json.dump(rows, f, indent=1)
  for row in rows:
    if row["method"] == "mae_pretraining":
      print(f"MAE pre-training {row.get('mae_run', '')} (mask ratio {row['mask_ratio']}): "
            f"val reconstruction loss "
            f"{row['val/reconstruction_loss']:.4f}, {row['seconds'] / 60:.1f} min wall, "
            f"{row['cpu_seconds'] / 60:.1f} min CPU")
  print(table(rows, args.match_noise))


if __name__ == "__main__":
  main()
