"""UNETR fine-tuning from MAE weights vs from scratch, same budget and seed.

Three comparisons; each fine-tunes twice with identical data, crops, steps, batch and
seed, once with the encoder of an MAE pre-training run loaded (`pretrained=DIR`) and
once from random weights:
  neurons       EM simulator, 3 affinities -> waterz; val/arand (lower is better)
  mitochondria  EM simulator, binary + contour -> seeded watershed; val/ap75
  nuclei        ../shared/data/volumes/nuclei.tif + nuclei_label.tif (20 nuclei), train
                z < 35, test z >= 35, binary + contour; val/dice, val/ap50
MAE pre-training (`configs/mae3d_pretrain.py:cpu,...`: ViT mini, patch 1x8x8, crops
4x32x32, mask ratio 0.75, AdamW; --norm_pix 0 by default, i.e. raw standardised voxels
as targets: with the reference's norm-pix loss the simulator run did not leave the
predict-the-mean loss within the CPU budget, so it could not teach the encoder anything;
RESULTS.md, "UNETR fine-tuning: MAE weights vs from scratch"): the two simulator comparisons share
one run on an unlabeled simulated volume (simulator seed 1000; the labeled volume has seed
0); nuclei pre-trains on the raw slices z < 35 only (its validation slices are z >= 35,
so no label and no test voxel is trained on). Fine-tuning uses the same encoder
(`configs/unetr3d_finetune.py:cpu,...`).

Every point is a config argument (column "config" of the json), runnable alone:
  python -m neuroseg_jax.main --config=configs/mae3d_pretrain.py:<config> --workdir=MAE
  python -m neuroseg_jax.main --config=configs/unetr3d_finetune.py:<config> --workdir=DIR

Writes WORKDIR/pretrain_vs_scratch.{json,csv} and prints the table. Compiled programs
are cached in WORKDIR/jax_cache, so the from-scratch twin of a run compiles nothing. Runs
resume from their checkpoints in WORKDIR (a finished run is reused, not retrained; its
time is then that of reading it): use a new WORKDIR after changing settings.

  python experiments/pretrain_vs_scratch.py --workdir /tmp/pvs
  python experiments/pretrain_vs_scratch.py --seeds 0,1,2 --mae_steps 3000 --finetune_steps 600
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import jax
import numpy as np

from neuroseg_jax import config_loading
from neuroseg_jax import tasks
from neuroseg_jax.data import em_volumes
from neuroseg_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FINETUNE_CONFIG = os.path.join(REPO, "configs", "unetr3d_finetune.py")
SHARED_VOLUMES = os.path.join(os.path.dirname(REPO), "shared", "data", "volumes")
NUCLEI_SPLIT_Z = 35  # configs/unetr3d_finetune.py:nuclei tests on z >= 35
MAE_CONFIG = os.path.join(REPO, "configs", "mae3d_pretrain.py")
# comparison -> (MAE run, fine-tuning config arguments, scores (name, higher is better)).
COMPARISONS = {
    "neurons": ("simulator", "target=affinities", (("arand", False), ("voi_split", False),
                                                   ("voi_merge", False))),
    "mitochondria": ("simulator", "target=binary_contour", (("ap75", True), ("ap50", True),
                                                            ("dice", True))),
    "nuclei": ("nuclei", "nuclei", (("dice", True), ("ap50", True), ("ap75", True))),
}


def pretrain_arg(args, run: str) -> str:
  """The `configs/mae3d_pretrain.py:...` argument of one MAE run."""
  arg = (f"cpu,num_steps={args.mae_steps},batch_size={args.mae_batch_size},"
         f"warmup_steps=0.05,mask_ratio={args.mask_ratio},norm_pix={bool(args.norm_pix)}")
  if run == "simulator":
    return arg + (f",simulator_shape={args.simulator_shape},"
                  f"simulator_zoom={args.simulator_zoom},simulator_seed=1000")
  depth = em_volumes.open_volume(os.path.join(SHARED_VOLUMES, "nuclei.tif")).shape[0]
  return (arg + f",source=file,path={os.path.join(SHARED_VOLUMES, 'nuclei.tif')},"
          f"val_slices={depth - NUCLEI_SPLIT_Z}")


def finetune_arg(args, comparison: str, seed: int, pretrained: str) -> str:
  """The `configs/unetr3d_finetune.py:...` argument of one fine-tuning run."""
  arg = (f"{COMPARISONS[comparison][1]},cpu,decoder_width={args.decoder_width},"
         f"batch_size={args.batch_size},num_steps={args.finetune_steps},"
         f"warmup_steps=0.1,lr={args.lr},label_fraction={args.label_fraction},seed={seed}")
  if comparison != "nuclei":
    arg += (f",simulator_shape={args.simulator_shape},simulator_zoom={args.simulator_zoom},"
            f"split_z=-{args.sim_test_slices}")
  return arg + f",pretrained={pretrained}" if pretrained else arg


def timed_run(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its last checkpoint; a finished run only
  re-reads its metrics) and returns the run time of this call."""
  wall, cpu = time.time(), time.process_time()
  loop.train(tasks.build(config), workdir, devices=jax.devices()[:1])
  return {"workdir": workdir, "wall_s": round(time.time() - wall, 1),
          "cpu_s": round(time.process_time() - cpu, 1)}


def last_values(workdir: str, prefix: str) -> dict:
  """{name: last value} of the metrics named prefix + name in WORKDIR/metrics.jsonl."""
  values = {}
  for record in loop.read_metrics(workdir):
    values.update({k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)})
  return values


def finetune_point(args, comparison: str, seed: int, pretrained: str, workdir: str) -> dict:
  """Fine-tunes one point and returns its record: config, run time and final val/ scores.

  The downstream hook for other studies (e.g. scores per MAE masking ratio): pass the
  MAE workdir as `pretrained` and `parse_args([...])` for the budget.
  """
  arg = finetune_arg(args, comparison, seed, pretrained)
  record = timed_run(config_loading.load_config(f"{FINETUNE_CONFIG}:{arg}"), workdir)
  return {**record, "comparison": comparison, "seed": seed, "config": arg,
          **last_values(workdir, "val/")}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/pretrain_vs_scratch")
  parser.add_argument("--comparisons", default="neurons,mitochondria,nuclei")
  parser.add_argument("--seeds", default="0", help="fine-tuning seeds, e.g. 0,1,2")
  parser.add_argument("--mae_steps", type=int, default=600)
  parser.add_argument("--mae_batch_size", type=int, default=32)
  parser.add_argument("--mask_ratio", type=float, default=0.75)
  parser.add_argument("--norm_pix", type=int, default=0,
                      help="1: per-patch normalised targets (the reference), 0: raw voxels")
  parser.add_argument("--finetune_steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--decoder_width", type=int, default=8)
  parser.add_argument("--label_fraction", type=float, default=1.0)
  parser.add_argument("--simulator_shape", default="32x128x128")
  parser.add_argument("--simulator_zoom", type=float, default=1.0,
                      help="simulated structures this many times larger (2: MitoEM-sized "
                           "mitochondria, 8-14 voxels across)")
  parser.add_argument("--sim_test_slices", type=int, default=12)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  rows, pretrained_runs = [], {}
  for comparison in args.comparisons.split(","):
    mae_run, _, scores = COMPARISONS[comparison]
    if mae_run not in pretrained_runs:
      arg = pretrain_arg(args, mae_run)
      record = timed_run(config_loading.load_config(f"{MAE_CONFIG}:{arg}"),
                         os.path.join(args.workdir, f"mae_{mae_run}"))
      record.update({"config": arg, **last_values(record["workdir"], "val/")})
      print(f"MAE {mae_run}: validation loss {record['reconstruction_loss']:.4f} vs "
            f"predict-the-mean {record['mean_baseline']:.4f} ({record['wall_s']} s)", flush=True)
      pretrained_runs[mae_run] = record
    for seed in (int(v) for v in args.seeds.split(",")):
      for init in ("mae", "scratch"):
        pretrained = pretrained_runs[mae_run]["workdir"] if init == "mae" else ""
        record = finetune_point(args, comparison, seed, pretrained,
                                os.path.join(args.workdir, f"{comparison}_{init}_seed{seed}"))
        record["init"] = init
        print(f"{comparison} {init} seed {seed}: "
              + ", ".join(f"{n}={record[n]:.4f}" for n, _ in scores)
              + f" ({record['wall_s']} s)", flush=True)
        rows.append(record)
      write_outputs(args, rows, summarize(rows), pretrained_runs)  # after every pair


def summarize(rows: list[dict]) -> list[dict]:
  """Per (comparison, score): mean over seeds from MAE and from scratch, their difference,
  the better init by the mean, and on how many paired seeds MAE was better."""
  table = []
  for comparison, (_, _, scores) in COMPARISONS.items():
    pairs = {}
    for row in rows:
      if row["comparison"] == comparison:
        pairs.setdefault(row["seed"], {})[row["init"]] = row
    pairs = [p for p in pairs.values() if len(p) == 2]
    if not pairs:
      continue
    for name, higher_is_better in scores:
      mae = np.array([p["mae"][name] for p in pairs])
      scratch = np.array([p["scratch"][name] for p in pairs])
      gain = (mae - scratch) * (1 if higher_is_better else -1)
      better = "tie" if gain.mean() == 0 else ("mae" if gain.mean() > 0 else "scratch")
      table.append({"comparison": comparison, "score": name, "mae": float(mae.mean()),
                    "scratch": float(scratch.mean()),
                    "mae_minus_scratch": float((mae - scratch).mean()), "better": better,
                    "mae_better_seeds": f"{int((gain > 0).sum())}/{len(pairs)}"})
  return table


def write_outputs(args, rows, table, pretrained_runs):
  with open(os.path.join(args.workdir, "pretrain_vs_scratch.json"), "w") as f:
    json.dump({"args": vars(args), "pretraining": pretrained_runs, "runs": rows,
               "table": table}, f, indent=2)
  with open(os.path.join(args.workdir, "pretrain_vs_scratch.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["comparison"])
    writer.writeheader()
    writer.writerows(table)
  print(f"\n{'comparison':<14}{'score':<11}{'MAE':>9}{'scratch':>9}{'MAE-scr':>9}  better"
        "  (MAE better on seeds)")
  for t in table:
    print(f"{t['comparison']:<14}{t['score']:<11}{t['mae']:>9.4f}{t['scratch']:>9.4f}"
          f"{t['mae_minus_scratch']:>+9.4f}  {t['better']:<7} ({t['mae_better_seeds']})")
  total = sum(r["wall_s"] for r in rows) + sum(r["wall_s"] for r in pretrained_runs.values())
  print(f"\ntotal run time {total:.0f} s; "
        f"tables in {args.workdir}/pretrain_vs_scratch.{{json,csv}}")
  print("fine-tuning points alone: python -m neuroseg_jax.main "
        "--config=configs/unetr3d_finetune.py:<config> --workdir=DIR with <config> from the json")


if __name__ == "__main__":
  main()
