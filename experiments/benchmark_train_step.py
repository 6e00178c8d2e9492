"""NeuroSeg-III training step with the real loss: images/s and peak memory per variant.

  python -m experiments.benchmark_train_step                 # 512 px, batch 8, windows 0 16
  python -m experiments.benchmark_train_step --mask-windows 16 --grad-accum 1 4 \
      --forms unroll calls
  python -m experiments.benchmark_train_step --mask-windows 16 --malloc glibc keep --rounds 2
  python -m experiments.benchmark_train_step --mask-windows 16 --grad-accum 4 --forms calls \
      --torch-batches 8 4 --rounds 3      # side by side with the PyTorch replica

The step is the project's own (`training/train_step.jit_train_step`: forward, loss,
backward, the recipe's optimizer), built for the task of `configs/neuroseg3_seg.py:abo`
(model, loss settings, optimizer). Variants change:
  * `loss.mask_window` (0 = the mask term on the full prototype map, K = on K x K
    crops around each box, the same loss: `losses/yolo_seg_loss.py`);
  * `grad_accum_steps` (the batch is split into that many micro-batches whose
    gradients are summed before one update; BatchNorm then normalises over each
    micro-batch) and its form, `grad_accum_form` (--forms: loop, unroll, calls);
  * the allocator policy (--malloc: "keep" = `runtime.keep_freed_memory`, as training
    runs: freed memory kept, calls one after another; "glibc" = glibc's
    defaults and JAX's asynchronous dispatch, under which every call maps and
    page-faults its temporaries afresh).
With --torch-batches, the PyTorch replica of the authors' step
(`experiments/torch_replica`: their network, the YOLOv8-seg loss as their fork lays
it out, AdamW; needs torch) runs in the same rounds at those batch sizes, and the
last lines give each variant's ratio to it.
The batch is synthetic: --instances neuron-sized boxes (12-48 px) with filled masks
per image, padded to the recipe's data.max_instances slots (or --slots) with valid =
False, as the data pipeline pads them; the slot count sets the assigner's [B, slots,
anchors] tensors and the mask term's per-instance crops.

Each variant runs in its own process, so its memory figures are its own; with
--rounds R the variants alternate R times (A B A B ...) so that a machine's drift
hits all. Per run: steady-state images/s (mean over --iters steps after --warmup),
compile seconds (with the first step), CPU seconds,
and three memory figures: XLA's own account of the compiled step (arguments +
outputs + temporaries, `memory_analysis`: what one step needs; not given for
"calls", which is several programs), the process's resident memory after the steps
(VmRSS: the step, the JAX runtime and what the allocator kept from compiling) and
its peak over its whole life (ru_maxrss). Like training runs, the child uses JAX's
persistent compilation cache: a variant's first run compiles (the peak includes
compilation), and a later run of it (--rounds 2, or another invocation) loads the
compiled step (compile seconds near 0), so its peak is the step's own plus the
runtime's. The last lines give each variant's best images/s and its ratio to the
first variant's, and the ceiling that this CPU's matrix speed sets on any step of
this network (`matmul_bound`: the step's arithmetic, about 3 x the forward pass's
FLOPs, over the float32 matrix-product rate measured in each JAX run; PyTorch's step
does the same arithmetic) with each variant's share of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from neuroseg_jax.training.train_step import GRAD_ACCUM_FORMS

RECIPE = "configs/neuroseg3_seg.py:abo"


def padded_batch(batch: int, size: int, instances: int, slots: int) -> dict:
  """experiments.benchmark_yolo_seg.synthetic_batch with [B, slots] instance slots and
  uint8 masks, as the data pipeline makes them (`data/instance_targets.py`)."""
  from experiments.benchmark_yolo_seg import synthetic_batch  # pylint: disable=import-outside-toplevel
  real = synthetic_batch(batch, size, instances)
  pad = slots - instances
  return {"image": real["image"],
          "boxes": np.pad(real["boxes"], ((0, 0), (0, pad), (0, 0))),
          "classes": np.pad(real["classes"], ((0, 0), (0, pad))),
          "valid": np.pad(real["valid"], ((0, 0), (0, pad))),
          "masks": np.pad(real["masks"].astype(np.uint8), ((0, 0), (0, pad), (0, 0), (0, 0)))}


def _resident_gib() -> float:
  """VmRSS of /proc/self/status (the process's resident memory now) in GiB."""
  with open("/proc/self/status") as f:
    kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  return kib / 2**20


def matmul_bound(model, size: int) -> dict:
  """This CPU's ceiling for a training step of `model` at `size` px: GFLOP per image (3
  x the forward pass's in XLA's count: forward, input gradient, kernel gradient) and
  float32 matrix-product GFLOP/s (2048^3 products in JAX, best of 5)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from experiments import benchmark_yolo_seg as bench  # pylint: disable=import-outside-toplevel
  variables = bench.init_variables(model)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, jnp.zeros((1, size, size, 3), jnp.float32)).cost_analysis()
  forward = forward[0] if isinstance(forward, list) else forward
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  seconds = min(bench.seconds_per_call(lambda: product(a), 1, 1) for _ in range(5))
  return {"step_gflop_per_image": 3 * forward["flops"] / 1e9,
          "matmul_gflop_s": 2 * 2048**3 / seconds / 1e9}


def run_variant(args) -> dict:
  """One variant in this process -> its figures."""
  from neuroseg_jax import runtime  # pylint: disable=import-outside-toplevel
  kept = args.malloc == "keep" and runtime.keep_freed_memory(calls_in_order=True)  # first
  import jax  # pylint: disable=import-outside-toplevel

  from experiments import benchmark_yolo_seg as bench  # pylint: disable=import-outside-toplevel
  from neuroseg_jax import config_loading  # pylint: disable=import-outside-toplevel
  from neuroseg_jax import tasks  # pylint: disable=import-outside-toplevel
  from neuroseg_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from neuroseg_jax.training import optimizers  # pylint: disable=import-outside-toplevel
  from neuroseg_jax.training import train_step  # pylint: disable=import-outside-toplevel

  runtime.enable_compilation_cache()  # as training runs do: a later run loads the step
  # The recipe's model, loss and optimizer; a tiny simulated source only builds the task
  # (the timed batch is synthetic).
  config = config_loading.load_config(f"{RECIPE},source=simulated,num_recordings=1,height=64,"
                                      "width=64,frames=40")
  config.loss.mask_window = args.mask_window
  config.batch_size, config.grad_accum_steps = args.batch, args.grad_accum
  config.data.max_instances = args.slots or config.data.max_instances
  task = tasks.build(config)
  tx, schedule = optimizers.make_optimizer(config)
  mesh = mesh_lib.make_data_mesh(jax.devices()[:1])
  batch = jax.device_put(padded_batch(args.batch, args.size, args.instances,
                                      config.data.max_instances), mesh_lib.batch_sharding(mesh))
  example = jax.tree.map(lambda x: x[:1], batch)
  init = lambda r: train_step.initial_state(task, tx, r, example)
  rng = jax.random.key(0, impl="rbg")
  shardings = mesh_lib.state_shardings(jax.eval_shape(init, rng), mesh)
  state = jax.jit(init, out_shardings=shardings)(rng)
  seed = mesh_lib.to_replicated(np.int32(0), mesh)
  step_fn = train_step.jit_train_step(task, tx, schedule, args.grad_accum, args.form,
                                      shardings, mesh)
  cpu_start, start = time.process_time(), time.perf_counter()
  if hasattr(step_fn, "lower"):  # one program: compiled alone, with XLA's memory account
    step_fn = step_fn.lower(state, batch, seed).compile()
    analysis = step_fn.memory_analysis()
    xla_gib = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
               analysis.temp_size_in_bytes - analysis.alias_size_in_bytes) / 2**30
  else:  # "calls": several programs, compiled by the first step
    xla_gib = float("nan")
  state = jax.block_until_ready(step_fn(state, batch, seed)[0])  # the first step, in every form
  compile_seconds = time.perf_counter() - start
  holder = [state]

  def call_step():  # carries the donated state from call to call
    holder[0], metrics = step_fn(holder[0], batch, seed)
    return metrics["loss"]

  seconds = bench.seconds_per_call(call_step, args.warmup, args.iters)
  bound = matmul_bound(task.model, args.size)
  return {**bound, "mask_window": args.mask_window, "grad_accum": args.grad_accum,
          "form": args.form, "malloc": args.malloc, "malloc_applied": kept,
          "images_per_s": args.batch / seconds, "step_s": seconds,
          "compile_s": compile_seconds, "cpu_s_all": time.process_time() - cpu_start,
          "loss": float(call_step()), "xla_gib": xla_gib,
          "resident_gib": _resident_gib(),
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "device": str(jax.devices()[0].device_kind)}


def _jax_child(args, window, accum, form, malloc) -> list[str]:
  return [sys.executable, "-m", "experiments.benchmark_train_step", f"--mask-window={window}",
          f"--grad-accum={accum}", f"--forms={form}", f"--malloc={malloc}",
          f"--size={args.size}", f"--batch={args.batch}", f"--instances={args.instances}",
          f"--iters={args.iters}", f"--warmup={args.warmup}", f"--slots={args.slots}"]


def _torch_child(args, batch) -> list[str]:
  return [sys.executable, "-m", "experiments.torch_replica.step", f"--batch={batch}",
          f"--size={args.size}", f"--instances={args.instances}", f"--iters={args.iters}",
          f"--warmup={args.warmup}"]


def _label(variant) -> str:
  if variant[0] == "torch":
    return f"PyTorch replica, batch {variant[1]}"
  window, accum, form, malloc = variant
  return f"mask window {window}, {accum} micro-batches ({form}), malloc {malloc}"


def _row(variant, r) -> str:
  """A table row of one run (JAX variant or the PyTorch replica)."""
  if variant[0] == "torch":
    return (f"| - | - | {_label(variant)} | - | {r['images_per_s']:.3f} | "
            f"{r['step_s']:.2f} | {r['compile_s']:.0f} | {r['cpu_s_all']:.0f} | - | - | "
            f"{r['peak_rss_gib']:.2f} | {r['loss']:.4f} |")
  window, accum, form, malloc = variant
  policy = malloc + ("" if r["malloc_applied"] or malloc == "glibc" else " (not applied)")
  return (f"| {window} | {accum} | {form} | {policy} | {r['images_per_s']:.3f} | "
          f"{r['step_s']:.2f} | {r['compile_s']:.0f} | {r['cpu_s_all']:.0f} | "
          f"{r['xla_gib']:.2f} | {r['resident_gib']:.2f} | {r['peak_rss_gib']:.2f} | "
          f"{r['loss']:.4f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--instances", type=int, default=120, help="real objects per image")
  parser.add_argument("--mask-windows", type=int, nargs="+", default=[0, 16])
  parser.add_argument("--grad-accum", type=int, nargs="+", default=[1],
                      help="micro-batches per step (each must divide --batch)")
  parser.add_argument("--forms", nargs="+", choices=GRAD_ACCUM_FORMS, default=["loop"],
                      help="forms of accumulation to compare (config grad_accum_form)")
  parser.add_argument("--malloc", nargs="+", choices=("keep", "glibc"), default=["keep"],
                      help="allocator policies to compare (keep: as the entry points run)")
  parser.add_argument("--torch-batches", type=int, nargs="*", default=[],
                      help="also time the PyTorch replica of the authors' step at these "
                      "batch sizes (experiments/torch_replica; needs torch)")
  parser.add_argument("--slots", type=int, default=0,
                      help="instance slots per image (data.max_instances; 0: the recipe's)")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--mask-window", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if 0 < args.slots < args.instances:
    parser.error(f"--slots {args.slots} cannot hold --instances {args.instances}")
  if args.mask_window is not None:  # a child: one variant, figures as JSON on stdout
    args.grad_accum, args.form, args.malloc = args.grad_accum[0], args.forms[0], args.malloc[0]
    print(json.dumps(run_variant(args)))
    return
  print(f"{RECIPE} model, loss and optimizer; {args.size} px, batch {args.batch}, "
        f"{args.instances} instances per image; {args.iters} timed steps after {args.warmup}")
  print("| mask window | micro-batches | form | malloc | images/s | s / step | compile s | "
        "CPU s | XLA's account GiB | resident after steps GiB | process peak GiB | loss |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  variants = [(w, k, f, m) for w in args.mask_windows for k in args.grad_accum
              for f in (args.forms if k > 1 else ["loop"]) for m in args.malloc]
  variants += [("torch", b) for b in args.torch_batches]
  results = []
  for _ in range(args.rounds):
    for variant in variants:
      child = (_torch_child(args, variant[1]) if variant[0] == "torch"
               else _jax_child(args, *variant))
      output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
      r = json.loads(output.strip().splitlines()[-1])
      results.append((variant, r))
      print(_row(variant, r), flush=True)
  best = {v: max(r["images_per_s"] for rv, r in results if rv == v) for v in variants}
  references = [v for v in variants if v[0] == "torch"]
  bounds = [r for v, r in results if v[0] != "torch"]
  ceiling = None
  if bounds:  # the same network in every variant and in the replica
    gflop = bounds[0]["step_gflop_per_image"]
    rate = max(r["matmul_gflop_s"] for r in bounds)
    ceiling = rate / gflop
    print(f"Matrix-product ceiling: {gflop:.1f} GFLOP per image (3 x the forward pass) at this "
          f"CPU's {rate:.1f} GFLOP/s (float32 2048^3 products, best of the runs) = "
          f"{ceiling:.3f} images/s")
  for variant, value in best.items():
    ratios = [f"{value / best[v]:.2f}x the replica at batch {v[1]}" for v in references]
    share = f", {value / ceiling:.0%} of the ceiling" if ceiling else ""
    print(f"{_label(variant)}: best {value:.3f} images/s, {value / best[variants[0]]:.2f}x the first "
          f"variant" + "".join(f", {ratio}" for ratio in ratios) + share)


if __name__ == "__main__":
  main()
