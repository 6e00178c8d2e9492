"""ISBI 2012: does the post-processing fail to transfer, or do the maps? Out-of-fold tuning.

  python -m experiments.em_out_of_fold --out DIR [--steps 400]

Trains the U-Net recipe of `neuroseg-jax train-em` (`--steps` of it) on slices 0-14 and on
three folds of them (5-14, 0-4 + 10-14, 0-9), segments all 20 slices with each model
(`neuroseg-jax segment-em`), then tunes the post-processing grid of
`configs/em2d_boundary.py:isbi,merge` (seeded watershed and agglomeration) three ways
and scores the full model's maps of slices 15-19 with each choice:
  in-sample    the full model's maps of its own training slices 0-14 (what train-em does)
  out-of-fold  each fold model's maps of the 5 slices it did not train on (0-14 in all)
  oracle       slices 15-19 themselves (a bound, not a result)
Finished model and segmentation folders in DIR are reused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import tifffile

from experiments.em_isbi_study import ISBI
from neuroseg_jax import config_loading
from neuroseg_jax.data import em_labels
from neuroseg_jax.evaluation import slice_segmentation
from neuroseg_jax.tasks import em_slices

# name: (training slices, validation slices, the slices of 0-14 it did not train on)
MODELS = {"full": ("0-14", "15-19", None), "a": ("5-14", "0-4", slice(0, 5)),
          "b": ("0-4+10-14", "5-9", slice(5, 10)), "c": ("0-9", "10-14", slice(10, 15))}


def _cli(*args: str) -> None:
  subprocess.run([sys.executable, "-m", "neuroseg_jax.cli", *args], check=True)


def boundary_maps(out: str, name: str, steps: int) -> np.ndarray:
  """[20, H, W] float32 boundary probabilities of model `name` (trained if missing)."""
  train, val, _ = MODELS[name]
  model, segmentation = os.path.join(out, f"m_{name}"), os.path.join(out, f"s_{name}")
  if not os.path.exists(os.path.join(model, "model.json")):
    _cli("train-em", "--data", ISBI, "--train-slices", train, "--val-slices", val,
         "--steps", str(steps), "--out", model)
  if not os.path.exists(os.path.join(segmentation, "boundary.tif")):
    _cli("segment-em", os.path.join(ISBI, "image"), "--model", model, "--out", segmentation)
  maps = tifffile.imread(os.path.join(segmentation, "boundary.tif"))
  return maps.astype(np.float32) / np.iinfo(maps.dtype).max


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=400, help="training steps of every model")
  args = parser.parse_args()
  gt = em_labels.open_labels(os.path.join(ISBI, "label"))[:]
  maps = {name: boundary_maps(args.out, name, args.steps) for name in MODELS}
  out_of_fold = np.concatenate([maps[name][held_out] for name, (_, _, held_out)
                                in MODELS.items() if held_out is not None])
  grid = em_slices.watershed_grid(
      config_loading.load_config("configs/em2d_boundary.py:isbi,merge").eval)
  validation = maps["full"][15:20]
  print("| tuned on | chosen post-processing | ARAND where tuned | ARAND 15-19 | "
        "VOI split | VOI merge |\n|---|---|---|---|---|---|")
  for name, tune_maps, tune_gt in (("in-sample, 0-14", maps["full"][:15], gt[:15]),
                                   ("out-of-fold, 0-14", out_of_fold, gt[:15]),
                                   ("oracle, 15-19", validation, gt[15:20])):
    params, table = slice_segmentation.tune_watershed(tune_maps, tune_gt, grid)
    scores = slice_segmentation.mean_scores(slice_segmentation.slice_scores(
        gt[15:20], slice_segmentation.watershed_slices(validation, params)))
    print(f"| {name} | {params} | {table[params]:.4f} | {scores['arand']:.4f} | "
          f"{scores['voi_split']:.3f} | {scores['voi_merge']:.3f} |", flush=True)


if __name__ == "__main__":
  main()
