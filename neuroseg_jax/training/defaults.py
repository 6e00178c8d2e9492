"""Fields every training config shares; config files start from `base_config()`.

Cadences (`log_every`, `eval_every`, `checkpoint_every`) and `optimizer.warmup_steps`
are written either as a fraction of the run (0 < v < 1) or as a number of steps
(a whole v >= 1). They are floats so that `--config.log_every=0.05` and
`--config.log_every=100` both parse; `resolve_cadence` turns them into whole steps
of `num_steps` when the run starts, so a fraction follows `num_steps` however it was
set (`configs/x.py:num_steps=N` or `--config.num_steps=N`).
"""

import ml_collections

from neuroseg_jax.errors import ConfigError

CADENCES = ("log_every", "eval_every", "checkpoint_every")


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
      "warmup_steps": 0.0,      # linear warmup from 0; a fraction of the run or steps
      "min_lr_ratio": 0.0,      # final lr = min_lr_ratio * lr
      "grad_clip_norm": 10.0,   # <= 0 disables clipping
      "freeze": "",             # top-level param subtree to freeze (e.g. "backbone")
      "freeze_steps": 0,        # freeze it for this many steps; -1 = the whole run
      "layer_decay": 1.0,       # < 1: a ViT encoder's layer k from the top learns at lr * decay**k
  })


def base_config() -> ml_collections.ConfigDict:
  """Engine fields: run length, logging, checkpointing, numerics."""
  return ml_collections.ConfigDict({
      "task": "",
      "seed": 0,
      "batch_size": 8,            # global batch, split over processes and devices
      "grad_accum_steps": 1,      # micro-batches per optimizer step
      # loop: one program, micro-batches in a loop holding one micro-batch's activations
      # (XLA:CPU runs it slowly); unroll: one program, written out (fast on CPU, saves no
      # memory); calls: one compiled call per micro-batch (train_step.jit_train_step).
      "grad_accum_form": "loop",
      "num_steps": 100,
      # > 0: after the last step, BatchNorm's running averages become the mean statistics
      # of this many training batches (training/batch_norm_stats.py; for micro-batches).
      "batch_norm_stats_batches": 0,
      # Cadences: a fraction of num_steps (0 < v < 1) or steps; 0: only at the end.
      "log_every": 0.1,
      "eval_every": 0.0,
      "checkpoint_every": 0.5,
      "keep_checkpoints": 3,
      "checkpoint_async": False,  # True: saves overlap training; a kill may lose 2 intervals
      "compute_dtype": "float32", # or bfloat16 (parameters stay float32)
      "data_workers": 0,          # grain worker threads preparing batches (0: main thread)
      "prefetch": 2,              # batches prepared ahead of the device
      "optimizer": optimizer_config(),
  })


def _whole_steps(name: str, value: float, num_steps: int) -> int:
  """`value` as steps: a fraction (0 < value < 1) of `num_steps`, or whole steps."""
  if value < 0 or (value >= 1 and value != int(value)):
    raise ConfigError(f"{name}={value!r}: expected a fraction of num_steps (0 < v < 1) or a "
                     "whole number of steps")
  return int(value) if value >= 1 else round(value * num_steps)


def resolve_cadence(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with its cadences and warmup in whole steps of `config.num_steps`.

  Every field in `CADENCES` becomes an int >= 1: a fraction f of the run becomes
  max(1, round(f * num_steps)) and 0 ("only at the end") becomes num_steps.
  `optimizer.warmup_steps` becomes round(f * num_steps) for a fraction (0: none).
  Whole numbers >= 1 are taken as steps; anything else raises ValueError. The
  engine calls this once, after every override, so the result depends only on the
  final field values.
  """
  values = config.to_dict()
  num_steps = values["num_steps"]
  for name in CADENCES:
    steps = _whole_steps(name, values[name], num_steps)
    values[name] = max(1, steps) if values[name] else num_steps
  optimizer = values["optimizer"]
  optimizer["warmup_steps"] = _whole_steps("optimizer.warmup_steps",
                                           optimizer["warmup_steps"], num_steps)
  return ml_collections.ConfigDict(values)
