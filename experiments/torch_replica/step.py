"""One timed PyTorch training step of the replica: images/s and memory as JSON on stdout.

  python -m experiments.torch_replica.step --batch 4 --size 512 --instances 120

The step is what ultralytics' trainer does per batch on a CPU: forward in training
mode, the YOLOv8-seg loss and backward; then, as the JAX step does, an update every
step: gradient-norm clipping at 10 and AdamW (lr 2e-3, weight decay 5e-4 on the conv
weights only). ultralytics accumulates gradients over 64 images before it updates
(and then also averages weights, ModelEMA, not included here), so the update's
seconds are reported apart (the JSON's "update_s"). The batch is the same synthetic one as the JAX
benchmark's (`benchmark_train_step.padded_batch`). torch runs on --threads threads
(default: all cores, as the JAX step uses them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

from experiments.benchmark_train_step import padded_batch
from experiments.torch_replica.network import NeuroSeg3Torch
from experiments.torch_replica.seg_loss import seg_loss


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
  """AdamW with ultralytics' parameter groups: decay on weights, none on norms and biases."""
  decay, plain = [], []
  for name, param in model.named_parameters():
    if param.requires_grad:
      (decay if name.endswith("weight") and param.ndim > 1 else plain).append(param)
  return torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4},
                            {"params": plain, "weight_decay": 0.0}], lr=2e-3,
                           betas=(0.937, 0.999))


def tensors(batch: dict) -> dict:
  """The numpy batch as torch tensors, images NCHW."""
  return {"image": torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous(),
          "boxes": torch.from_numpy(batch["boxes"]),
          "classes": torch.from_numpy(batch["classes"]).long(),
          "valid": torch.from_numpy(batch["valid"]),
          "masks": torch.from_numpy(batch["masks"])}


def train_step(model, optimizer, batch: dict) -> tuple[float, float]:
  """One update -> (the loss over the batch size, the JAX loss's scale; seconds of the
  clipping and AdamW update alone, which ultralytics runs once per 64 images)."""
  raw, coefs, protos = model(batch["image"])
  loss, _ = seg_loss(raw, coefs, protos, batch["boxes"], batch["classes"], batch["valid"],
                     batch["masks"])
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  start = time.perf_counter()
  torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
  optimizer.step()
  return float(loss.detach()) / len(batch["image"]), time.perf_counter() - start


def run(args) -> dict:
  torch.set_num_threads(args.threads or os.cpu_count())
  torch.manual_seed(0)
  model = NeuroSeg3Torch().train()
  optimizer = make_optimizer(model)
  batch = tensors(padded_batch(args.batch, args.size, args.instances, args.instances))
  cpu_start, start = time.process_time(), time.perf_counter()
  for _ in range(args.warmup):
    train_step(model, optimizer, batch)
  first_s = time.perf_counter() - start
  start, update_s = time.perf_counter(), 0.0
  for _ in range(args.iters):
    loss, seconds = train_step(model, optimizer, batch)
    update_s += seconds / args.iters
  seconds = (time.perf_counter() - start) / args.iters
  return {"framework": "torch", "batch": args.batch, "threads": torch.get_num_threads(),
          "images_per_s": args.batch / seconds, "step_s": seconds, "update_s": update_s,
          "compile_s": first_s,
          "cpu_s_all": time.process_time() - cpu_start, "loss": loss,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "torch": torch.__version__}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--instances", type=int, default=120)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=0, help="0: every core")
  args = parser.parse_args()
  print(json.dumps(run(args)))


if __name__ == "__main__":
  main()
