"""Size and speed of NeuroSeg-III and YOLOv8s-seg (YOLOSeg presets) on the present device.

For each model and input size prints: parameters; GFLOPs per image (2 x MACs
of convolutions and matrix products incl. DFL decoding, the count that equals
torch.utils.flop_counter on the reference; and XLA's cost analysis, which skips
padding taps and adds elementwise ops: see neuroseg_jax.reference.profiling);
forward images/s (eval mode, decoded outputs); train-step images/s (forward +
backward + AdamW update, train-mode BatchNorm and drop-path). The train loss is
`neuroseg_jax.losses.yolo_seg_loss` on synthetic targets (--instances random
boxes with filled-box masks per image) when importable, else a sum-of-squares
surrogate over all outputs (the column header says which).
Compiles are timed separately (ahead of time); step times are wall-clock means
over --iters calls after --warmup untimed ones, each ended by block_until_ready.
XLA's FLOPs come from the compiled forward (per image). Parameters are
initialised once per model with an "rbg" PRNG key (XLA:CPU compiles threefry
slowly); the train steps donate (and so consume) their copy of the state.
On CPU the run is dominated by XLA compiles of the train steps (RESULTS.md,
"NeuroSeg-III network"); --cache-dir keeps them for the next run.

  python experiments/benchmark_yolo_seg.py --sizes 512 640 --batch 1 --iters 2
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neuroseg_jax.models.yolo_seg import build_yolo_seg
from neuroseg_jax.reference import profiling

try:
  from neuroseg_jax.losses.yolo_seg_loss import yolo_seg_loss
except ImportError:
  yolo_seg_loss = None

MODELS = {"NeuroSeg-III": "neuroseg3", "YOLOv8s-seg": "yolov8s_seg"}


def synthetic_batch(batch: int, size: int, instances: int, seed: int = 0) -> dict:
  """Images [B, S, S, 3] and `instances` random boxes / filled-box masks per image."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(32, size - 32, (batch, instances, 2))
  halves = rng.uniform(6, 24, (batch, instances, 2))
  boxes = np.concatenate([centres - halves, centres + halves], -1).astype(np.float32)
  grid = (np.arange(size // 4) + 0.5) * 4
  cells = boxes[..., None, :]  # masks at prototype resolution (stride 4)
  inside_x = (grid >= cells[..., 0]) & (grid < cells[..., 2])
  inside_y = (grid >= cells[..., 1]) & (grid < cells[..., 3])
  return {"image": rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32),
          "boxes": boxes, "classes": np.zeros((batch, instances), np.int32),
          "valid": np.ones((batch, instances), bool),
          "masks": (inside_y[..., :, None] & inside_x[..., None, :]).astype(np.float32)}


def train_loss(outputs: dict, batch: dict) -> jax.Array:
  if yolo_seg_loss is not None:
    return yolo_seg_loss(outputs, batch)[0]
  return sum(jnp.mean(jnp.square(v.astype(jnp.float32))) for v in outputs.values())


def compile_timed(fn, *args, donate_argnums=()):
  """(jit(fn) compiled for args, seconds the compile took)."""
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  return compiled, time.perf_counter() - start


def seconds_per_call(call, warmup: int, iters: int) -> float:
  """Mean wall-clock seconds of call() after `warmup` untimed calls (block_until_ready)."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  start = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(call())
  return (time.perf_counter() - start) / iters


def init_variables(model) -> dict:
  """Model variables (they do not depend on the input size: initialised on a 64 x 64 image)."""
  return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(
      jnp.zeros((1, 64, 64, 3), jnp.float32))


def time_train_step(model, variables: dict, batch: dict, loss_fn, warmup: int,
                    iters: int) -> tuple[float, float, float]:
  """(seconds per training step, compile seconds, loss after the timed steps) of forward +
  `loss_fn(outputs, batch)` + backward + AdamW update, train-mode BatchNorm and drop-path."""
  optimizer = optax.adamw(1e-3, weight_decay=5e-4)

  def train_step(params, opt_state, batch_stats, batch, rng):
    def objective(params):
      outputs, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                     batch["image"], train=True, mutable=["batch_stats"],
                                     rngs={"drop_path": rng})
      return loss_fn(outputs, batch), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_stats, loss

  params, batch_stats = jax.tree.map(jnp.copy, (variables["params"], variables["batch_stats"]))
  state = [params, optimizer.init(params), batch_stats]  # copies: the step donates them
  rng = jax.random.key(1, impl="rbg")
  step, compile_seconds = compile_timed(train_step, *state, batch, rng, donate_argnums=(0, 1, 2))

  def call_step():  # carries the donated state from call to call
    state[0], state[1], state[2], loss = step(*state, batch, rng)
    return loss

  seconds = seconds_per_call(call_step, warmup, iters)
  return seconds, compile_seconds, float(call_step())


def benchmark(model, variables: dict, size: int, args) -> dict:
  image_hw = (size, size)
  forward, abstract_vars, abstract_image = profiling.inference_fn(model, image_hw)  # decodes too
  batch = synthetic_batch(args.batch, size, args.instances)
  fwd, fwd_compile = compile_timed(forward, variables, batch["image"])
  fwd_time = seconds_per_call(lambda: fwd(variables, batch["image"]), args.warmup, args.iters)

  train_time, train_compile, loss = time_train_step(model, variables, batch, train_loss,
                                                    args.warmup, args.iters)
  return {
      "params": profiling.count_params(abstract_vars["params"]),
      "matmul_gflops": profiling.matmul_flops(forward, abstract_vars, abstract_image) / 1e9,
      "xla_gflops": profiling.compiled_flops(fwd) / args.batch / 1e9,
      "fwd_ips": args.batch / fwd_time, "train_ips": args.batch / train_time,
      "fwd_compile_s": fwd_compile, "train_compile_s": train_compile, "loss": loss}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--sizes", nargs="+", type=int, default=[512, 640])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--iters", type=int, default=2, help="timed calls per measurement")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  parser.add_argument("--instances", type=int, default=8, help="synthetic objects per image")
  parser.add_argument("--dtype", default="float32", help="compute dtype (e.g. bfloat16)")
  parser.add_argument("--cache-dir", default=None,
                      help="persistent XLA compilation cache (compiles dominate a CPU run)")
  args = parser.parse_args()
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)

  loss_name = "yolo_seg_loss" if yolo_seg_loss is not None else "SURROGATE sum-of-squares loss"
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s); "
        f"batch {args.batch}, {args.iters} timed iters after {args.warmup} warm-up; "
        f"compute dtype {args.dtype}")
  print(f"| model | size | params | GFLOPs (conv+matmul) | GFLOPs (XLA) | fwd img/s "
        f"| train img/s ({loss_name} + AdamW) | compile fwd / train (s) | loss after |")
  print("|---|---|---|---|---|---|---|---|---|")
  for label in args.models:
    model = build_yolo_seg({"preset": MODELS[label], "dtype": args.dtype})
    variables = init_variables(model)
    for size in args.sizes:
      r = benchmark(model, variables, size, args)
      print(f"| {label} | {size} | {r['params']:,} | {r['matmul_gflops']:.2f} "
            f"| {r['xla_gflops']:.2f} | {r['fwd_ips']:.2f} | {r['train_ips']:.2f} "
            f"| {r['fwd_compile_s']:.0f} / {r['train_compile_s']:.0f} | {r['loss']:.3f} |",
            flush=True)


if __name__ == "__main__":
  main()
