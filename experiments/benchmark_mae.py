"""MAE pre-training throughput (crops/s, voxels/s) on the present device.

Times the engine's jitted train step of the "mae_pretrain" task (MAE forward on
the visible tokens, decoder, norm-pix masked MSE, backward, AdamW update) for the
reference setting of configs/mae3d_pretrain.py: ViT-base, 6x96x96 crops, patch
1x16x16, decoder 384 x 8, at each masking ratio. The compile is timed
separately; steps are wall-clock means over --iters calls after --warmup
untimed ones, each ended by block_until_ready, on one device, with the batch
already on the device (the input pipeline is not timed). voxels/s = crops/s x
voxels per crop.

  python experiments/benchmark_mae.py --batch 8 --iters 3
  python experiments/benchmark_mae.py \
      --config=configs/mae3d_pretrain.py:compute_dtype=bfloat16 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuroseg_jax.tasks.mae_pretrain  # noqa: F401  (registers "mae_pretrain")
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.training import defaults
from neuroseg_jax.training import optimizers
from neuroseg_jax.training import train_step as train_step_lib


def benchmark(spec: str, ratio: float, batch: int, warmup: int, iters: int) -> dict:
  config = config_loading.load_config(f"{spec},mask_ratio={ratio},batch_size={batch}")
  # Data come from a small simulated volume: only its crop shape matters here.
  config.data.source = "simulator"
  config.data.simulator.shape = (config.data.crop[0] + config.data.val_slices + 2, 128, 128)
  config = defaults.resolve_cadence(config)  # the warmup in steps, as the engine sees it
  task = tasks.get_task(config.task)(config)
  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  examples = [task.make_example(i, rng) for i in range(batch)]
  images = jax.device_put({"image": np.stack([e["image"] for e in examples])}, device)

  tx, schedule = optimizers.make_optimizer(config)
  init = jax.jit(lambda r: train_step_lib.initial_state(task, tx, r, images))
  state = jax.block_until_ready(init(jax.random.key(0, impl="rbg")))
  step = jax.jit(train_step_lib.make_train_step(task, tx, schedule), donate_argnums=0)
  seed = jnp.int32(1)
  start = time.perf_counter()
  compiled = step.lower(state, images, seed).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, images, seed)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(iters):
    state, metrics = compiled(state, images, seed)
    jax.block_until_ready(state)
  step_s = (time.perf_counter() - start) / iters
  voxels = int(np.prod(config.data.crop))
  return {"device": device.device_kind, "size": config.model.size, "crop": list(config.data.crop),
          "patch": list(config.model.patch_size), "mask_ratio": ratio, "batch": batch,
          "dtype": config.compute_dtype, "compile_s": round(compile_s, 2),
          "step_ms": round(1e3 * step_s, 1), "crops_per_s": round(batch / step_s, 2),
          "voxels_per_s": round(batch * voxels / step_s), "loss": float(metrics["loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/mae3d_pretrain.py:")
  parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.9])
  parser.add_argument("--batch", type=int, default=0, help="0: 8 on CPU, 64 on an accelerator")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--json", default="", help="also write the rows to this file")
  args = parser.parse_args()
  batch = args.batch or (8 if jax.devices()[0].platform == "cpu" else 64)
  spec = args.config if ":" in args.config else f"{args.config}:"
  rows = []
  print(f"{'device':>18} {'size':>5} {'ratio':>5} {'batch':>5} {'dtype':>8} {'compile s':>9} "
        f"{'step ms':>9} {'crops/s':>9} {'voxels/s':>12}")
  for ratio in args.ratios:
    row = benchmark(spec, ratio, batch, args.warmup, args.iters)
    rows.append(row)
    print(f"{row['device']:>18} {row['size']:>5} {ratio:>5} {batch:>5} {row['dtype']:>8} "
          f"{row['compile_s']:>9} {row['step_ms']:>9} {row['crops_per_s']:>9} "
          f"{row['voxels_per_s']:>12,}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
