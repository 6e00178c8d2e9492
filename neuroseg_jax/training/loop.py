"""The training loop shared by every task family.

build mesh -> build task -> init state into its shardings (or resume) ->
loop: next batch, jitted step, check finiteness, log, evaluate, checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import ml_collections

from neuroseg_jax import tasks
from neuroseg_jax.training import checkpointing
from neuroseg_jax.training import mesh as mesh_lib
from neuroseg_jax.training import metrics_logging
from neuroseg_jax.training import optimizers
from neuroseg_jax.training import train_step as train_step_lib


class NonFiniteError(FloatingPointError):
  """Raised when a training step produced a non-finite loss or gradient norm."""


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items()
         if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if bad:
    raise NonFiniteError(
        f"training stopped at step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}"
        f" (all metrics of that step: {metrics}). The last checkpoint before it is intact; "
        f"lower the learning rate, enable gradient clipping or check the input data.")


def make_predict_fn(task: tasks.base.Task, state: dict, mesh) -> Any:
  """Host-facing predict function for evaluators: numpy batch in, numpy outputs out."""
  jitted = jax.jit(task.predict_fn)

  def predict(batch: dict):
    return jax.device_get(jitted(state["params"], state["model_state"],
                                 mesh_lib.to_replicated(batch, mesh)))

  return predict


def run_evaluators(task: tasks.base.Task, state: dict, mesh, workdir: str) -> dict[str, float]:
  results = {}
  predict = make_predict_fn(task, state, mesh)
  for evaluator in task.evaluators(workdir):
    for name, value in evaluator.run(predict):
      results[name] = value
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: full experiment config (see `training/defaults.py` and `configs/`).
    workdir: output directory: checkpoints/, metrics.jsonl, tensorboard/.
    devices: devices to train on (default: all devices of all processes).

  Returns:
    The final state: {"step", "params", "model_state", "opt"} of global arrays.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_data_mesh(devices)
  task = tasks.get_task(config.task)(config)
  local_batch = mesh_lib.local_batch_size(config.batch_size, mesh)
  if config.batch_size % (config.grad_accum_steps * mesh.devices.size):
    raise ValueError(f"batch_size={config.batch_size} must be divisible by grad_accum_steps "
                     f"({config.grad_accum_steps}) x devices ({mesh.devices.size})")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  tx, schedule = optimizers.make_optimizer(config)
  step_rng = jax.random.key(config.seed)
  # Parameter init is replicated, so it can use the RBG generator, which XLA compiles
  # several times faster than threefry for models with hundreds of parameter arrays.
  # Steps keep threefry: its values do not depend on how arrays are sharded.
  init_rng = jax.random.key(config.seed, impl="rbg")

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            keep=config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  batches = task.train_batches(start_step, local_batch, jax.process_index(),
                               jax.process_count())
  first_batch = next(batches, None)

  example = jax.tree.map(lambda x: x[:1], first_batch) if first_batch is not None else (
      jax.tree.map(lambda x: x[:1], next(task.train_batches(0, local_batch, 0, 1))))
  init_fn = lambda r: train_step_lib.initial_state(task, tx, r, example)
  shapes = jax.eval_shape(init_fn, init_rng)
  shardings = mesh_lib.state_shardings(shapes, mesh)
  if start_step:
    state = checkpointer.restore(checkpointing.abstract_with_shardings(shapes, shardings))
    logging.info("resumed from step %d", start_step)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
    loaded = task.load_pretrained(jax.device_get(state["params"]),
                                  jax.device_get(state["model_state"]))
    if loaded is not None:
      state = {**state, "params": loaded[0], "model_state": loaded[1]}
      state = mesh_lib.host_to_global(state, shardings)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("task %s: %d parameters, %d devices, global batch %d", config.task,
               num_params, mesh.devices.size, config.batch_size)

  step_fn = train_step_lib.make_train_step(task, tx, schedule, step_rng,
                                           config.grad_accum_steps)
  step_fn = jax.jit(step_fn, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                    out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)

  writer = metrics_logging.MetricWriter(workdir, config.num_steps, start_step)
  window_start, window_steps = time.time(), 0
  step = start_step
  pending = None  # (step, metrics) of the last dispatched step, checked one step late.

  def settle():
    """Fetches and checks the last dispatched step's metrics; returns them."""
    done_step, metrics = pending
    values = train_step_lib.as_float(metrics)
    _check_finite(done_step, values)
    return done_step, values

  try:
    batch = first_batch
    while step < config.num_steps:
      global_batch = mesh_lib.to_global_batch(batch, mesh)
      state, metrics = step_fn(state, global_batch)
      step += 1
      window_steps += 1
      if pending is not None:
        settle()
      pending = (step, metrics)
      batch = next(batches, None) if step < config.num_steps else None

      last = step == config.num_steps
      if step % config.log_every == 0 or last:
        _, values = settle()
        elapsed = time.time() - window_start
        values = {f"train/{k}": v for k, v in values.items()}
        values["examples_per_sec"] = window_steps * config.batch_size / elapsed
        values["steps_per_sec"] = window_steps / elapsed
        writer.write(step, values)
        window_start, window_steps = time.time(), 0
      else:
        writer.advance(step)
      if (config.eval_every and step % config.eval_every == 0) or last:
        settle()
        writer.write(step, run_evaluators(task, state, mesh, workdir))
      if step % config.checkpoint_every == 0 or last:
        settle()
        checkpointer.save(step, state)
    if pending is not None:
      settle()
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  return state


def read_metrics(workdir: str) -> list[dict]:
  """All records of DIR/metrics.jsonl, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
