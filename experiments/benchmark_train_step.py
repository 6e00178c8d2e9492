"""NeuroSeg-III training step with the real loss: images/s and peak memory per mask window.

  python -m experiments.benchmark_train_step                 # 512 px, batch 8, windows 0 16
  python -m experiments.benchmark_train_step --batch 4 --rounds 2 --mask-windows 0 8 16

The model and the loss settings are those of `configs/neuroseg3_seg.py:abo` (the
real-data recipe); only `loss.mask_window` changes between the variants (0 = the
mask term on the full prototype map, K = on K x K crops around each box, the same
loss: `losses/yolo_seg_loss.py`). The batch is synthetic: --instances neuron-sized
boxes (12-48 px) with filled masks per image, padded to the recipe's
data.max_instances slots with valid = False, as the data pipeline pads them.

Each variant runs in its own process, so its peak resident memory (ru_maxrss,
compile included) is its own; with --rounds R the variants alternate R times
(A B A B ...) so that a machine's drift hits both. Per run: steady-state images/s
(mean over --iters steps after --warmup), compile seconds, CPU seconds of the
timed steps, peak memory. The last lines give each variant's best images/s and
its ratio to the first variant's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

RECIPE = "configs/neuroseg3_seg.py:abo"


def padded_batch(batch: int, size: int, instances: int, slots: int) -> dict:
  """experiments.benchmark_yolo_seg.synthetic_batch with [B, slots] instance slots."""
  from experiments.benchmark_yolo_seg import synthetic_batch  # pylint: disable=import-outside-toplevel
  real = synthetic_batch(batch, size, instances)
  pad = slots - instances
  return {"image": real["image"],
          "boxes": np.pad(real["boxes"], ((0, 0), (0, pad), (0, 0))),
          "classes": np.pad(real["classes"], ((0, 0), (0, pad))),
          "valid": np.pad(real["valid"], ((0, 0), (0, pad))),
          "masks": np.pad(real["masks"], ((0, 0), (0, pad), (0, 0), (0, 0)))}


def run_variant(args) -> dict:
  """One variant in this process -> its figures."""
  import jax  # pylint: disable=import-outside-toplevel

  from experiments import benchmark_yolo_seg as bench  # pylint: disable=import-outside-toplevel
  from neuroseg_jax import config_loading  # pylint: disable=import-outside-toplevel
  from neuroseg_jax.losses import yolo_seg_loss  # pylint: disable=import-outside-toplevel
  from neuroseg_jax.models import yolo_seg  # pylint: disable=import-outside-toplevel

  config = config_loading.load_config(RECIPE)
  config.loss.mask_window = args.mask_window
  hyper = yolo_seg_loss.SegLossHyper(**config.loss.to_dict())
  model = yolo_seg.build_yolo_seg(config.model)
  variables = bench.init_variables(model)
  batch = padded_batch(args.batch, args.size, args.instances, config.data.max_instances)
  loss_fn = lambda outputs, b: yolo_seg_loss.yolo_seg_loss(outputs, b, hyper)[0]  # noqa: E731
  cpu_start = time.process_time()
  seconds, compile_seconds, loss = bench.time_train_step(model, variables, batch, loss_fn,
                                                         args.warmup, args.iters)
  return {"mask_window": args.mask_window, "images_per_s": args.batch / seconds,
          "step_s": seconds, "compile_s": compile_seconds,
          "cpu_s_all": time.process_time() - cpu_start, "loss": loss,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "device": str(jax.devices()[0].device_kind)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--instances", type=int, default=120, help="real objects per image")
  parser.add_argument("--mask-windows", type=int, nargs="+", default=[0, 16])
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--mask-window", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.mask_window is not None:  # a child: one variant, figures as JSON on stdout
    print(json.dumps(run_variant(args)))
    return
  print(f"{RECIPE} model and loss; {args.size} px, batch {args.batch}, {args.instances} "
        f"instances per image; {args.iters} timed steps after {args.warmup}")
  print("| mask window | images/s | s / step | compile s | CPU s (compile + steps) | "
        "peak memory GiB | loss |")
  print("|---|---|---|---|---|---|---|")
  results = []
  for _ in range(args.rounds):
    for window in args.mask_windows:
      child = [sys.executable, "-m", "experiments.benchmark_train_step",
               f"--mask-window={window}", f"--size={args.size}", f"--batch={args.batch}",
               f"--instances={args.instances}", f"--iters={args.iters}",
               f"--warmup={args.warmup}"]
      output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
      r = json.loads(output.strip().splitlines()[-1])
      results.append(r)
      print(f"| {window} | {r['images_per_s']:.3f} | {r['step_s']:.2f} | {r['compile_s']:.0f} | "
            f"{r['cpu_s_all']:.0f} | {r['peak_rss_gib']:.2f} | {r['loss']:.4f} |", flush=True)
  best = {w: max(r["images_per_s"] for r in results if r["mask_window"] == w)
          for w in args.mask_windows}
  first = args.mask_windows[0]
  for window, value in best.items():
    print(f"mask window {window}: best {value:.3f} images/s, {value / best[first]:.2f}x "
          f"window {first}")


if __name__ == "__main__":
  main()
