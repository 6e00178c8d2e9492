"""Fields every training config shares; config files start from `base_config()`."""

import ml_collections


def optimizer_config() -> ml_collections.ConfigDict:
  """Optimizer and learning-rate schedule (see `training/optimizers.py`)."""
  return ml_collections.ConfigDict({
      "name": "adamw",          # adamw | sgd
      "lr": 1e-3,               # peak learning rate
      "weight_decay": 1e-4,
      "b1": 0.9,                # adamw
      "b2": 0.999,              # adamw
      "momentum": 0.9,          # sgd
      "nesterov": True,         # sgd
      "schedule": "cosine",     # cosine | constant
      "warmup_steps": 0,        # linear warmup from 0
      "min_lr_ratio": 0.0,      # final lr = min_lr_ratio * lr
      "grad_clip_norm": 10.0,   # <= 0 disables clipping
      "freeze": "",             # top-level param subtree to freeze (e.g. "backbone")
      "freeze_steps": 0,        # freeze it for this many steps; -1 = the whole run
  })


def base_config() -> ml_collections.ConfigDict:
  """Engine fields: run length, logging, checkpointing, numerics."""
  return ml_collections.ConfigDict({
      "task": "",
      "seed": 0,
      "batch_size": 8,            # global batch, split over processes and devices
      "grad_accum_steps": 1,      # micro-batches per optimizer step
      "num_steps": 100,
      "log_every": 10,
      "eval_every": 0,            # 0: evaluate only at the end
      "checkpoint_every": 50,
      "keep_checkpoints": 3,
      "compute_dtype": "float32", # or bfloat16 (parameters stay float32)
      "data_workers": 0,          # grain worker threads preparing batches (0: main thread)
      "prefetch": 2,              # batches prepared ahead of the device
      "optimizer": optimizer_config(),
  })
