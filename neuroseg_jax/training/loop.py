"""The training loop shared by every task family.

The caller builds the task (`neuroseg_jax.tasks.build(config)`) and hands it over:
claim the run folder -> build mesh -> init state into its shardings (or resume
from the newest intact checkpoint) -> loop: next batch, jitted step, check
finiteness, log, evaluate, checkpoint. The engine never looks a task up.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from neuroseg_jax.errors import ConfigError, UserError
from neuroseg_jax.training import batch_norm_stats
from neuroseg_jax.training import checkpointing
from neuroseg_jax.training import defaults
from neuroseg_jax.training import mesh as mesh_lib
from neuroseg_jax.training import metrics_logging
from neuroseg_jax.training import optimizers
from neuroseg_jax.training import run_folder
from neuroseg_jax.training import train_step as train_step_lib
from neuroseg_jax.training.task import Task


class NonFiniteError(UserError, FloatingPointError):
  """Raised when a training step produced a non-finite loss or gradient norm."""


def _check_finite(step: int, metrics: dict[str, float], last_saved: int | None) -> None:
  bad = {k: v for k, v in metrics.items()
         if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if bad:
    saved = (f"the checkpoint of step {last_saved} is intact and a rerun resumes there"
             if last_saved else "no checkpoint was written before it")
    raise NonFiniteError(
        f"training stopped at step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}"
        f"; {saved}. Lower the learning rate, enable gradient clipping or check the input "
        f"data (all metrics of that step: {metrics})")


def make_predict_fn(task: Task, state: dict, mesh) -> Any:
  """Host-facing predict function for evaluators: numpy batch in, numpy outputs out.

  The batch ([B, ...] leaves, the same on every process) is split over the mesh's data
  axis, so each device predicts B / devices examples; B is padded with copies of the
  last example to a multiple of the device count and the padding's outputs dropped.
  Every output leaf must lead with the batch axis (`Task.predict_fn`).
  """
  jitted = jax.jit(task.predict_fn, out_shardings=mesh_lib.replicated(mesh))
  num_devices = mesh.devices.size

  def predict(batch: dict):
    size = len(jax.tree.leaves(batch)[0])
    padding = -size % num_devices
    if padding:
      batch = jax.tree.map(
          lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], padding, 0)]), batch)
    outputs = jax.device_get(jitted(state["params"], state["model_state"],
                                    mesh_lib.split_over_data(batch, mesh)))
    return jax.tree.map(lambda x: x[:size], outputs)

  return predict


def run_evaluators(task: Task, state: dict, mesh, workdir: str) -> dict[str, float]:
  results = {}
  predict = make_predict_fn(task, state, mesh)
  for evaluator in task.evaluators(workdir):
    for name, value in evaluator.run(predict):
      results[name] = value
  return results


def train(task: Task, workdir: str, devices: Sequence[jax.Device] | None = None,
          overwrite: bool = False) -> dict:
  """Trains `task` (configured by `task.config`) in `workdir`, resuming what is there.

  Args:
    task: the task to train, built by the caller (the caller keeps it, with its data).
    workdir: output directory: run.json, checkpoints/, metrics.jsonl, tensorboard/.
    devices: devices to train on (default: all devices of all processes).
    overwrite: replace a run of another config or data in `workdir` instead of refusing.

  Returns:
    The final state: {"step", "params", "model_state", "opt"} of global arrays.
  """
  run_folder.claim(workdir, task.config, overwrite)
  config = defaults.resolve_cadence(task.config)
  mesh = mesh_lib.make_data_mesh(devices)
  local_batch = mesh_lib.local_batch_size(config.batch_size, mesh)
  if config.batch_size % (config.grad_accum_steps * mesh.devices.size):
    raise ConfigError(f"batch_size={config.batch_size} must be divisible by grad_accum_steps "
                      f"({config.grad_accum_steps}) x devices ({mesh.devices.size})")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  tx, schedule = optimizers.make_optimizer(config)
  # Parameter init is replicated, so it can use the RBG generator, which XLA compiles
  # several times faster than threefry for models with hundreds of parameter arrays.
  # Steps keep threefry: its values do not depend on how arrays are sharded.
  init_rng = jax.random.key(config.seed, impl="rbg")
  seed = mesh_lib.to_replicated(np.int32(config.seed), mesh)

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            keep=config.keep_checkpoints,
                                            asynchronous=config.checkpoint_async)

  def batches_from(step):
    return task.train_batches(step, local_batch, jax.process_index(), jax.process_count())

  expected_start = checkpointer.latest_step() or 0
  batches = batches_from(expected_start)
  batch = next(batches, None)
  example = jax.tree.map(lambda x: x[:1], batch if batch is not None
                         else next(task.train_batches(0, local_batch, 0, 1)))
  init_fn = lambda r: train_step_lib.initial_state(task, tx, r, example)
  shapes = jax.eval_shape(init_fn, init_rng)
  shardings = mesh_lib.state_shardings(shapes, mesh)
  restored = checkpointer.restore_latest_intact(
      checkpointing.abstract_with_shardings(shapes, shardings))
  if restored is not None:
    start_step, state = restored
    logging.info("resumed from step %d", start_step)
  else:
    start_step = 0
    state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
    loaded = task.load_pretrained(jax.device_get(state["params"]),
                                  jax.device_get(state["model_state"]))
    if loaded is not None:
      state = {**state, "params": loaded[0], "model_state": loaded[1]}
      state = mesh_lib.host_to_global(state, shardings)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("task %s: %d parameters, %d devices, global batch %d", config.task,
               num_params, mesh.devices.size, config.batch_size)
  if start_step != expected_start:  # a damaged checkpoint was skipped
    batches = batches_from(start_step)
    batch = next(batches, None)

  step_fn = train_step_lib.jit_train_step(task, tx, schedule, config.grad_accum_steps,
                                          config.grad_accum_form, shardings, mesh)
  if start_step < config.num_steps:
    logging.info("compiling the training step (the first step waits for it; later runs "
                 "of the same model reuse the compilation cache)")

  writer = metrics_logging.MetricWriter(workdir, config.num_steps, start_step)
  window_start, window_steps = time.time(), 0
  step = start_step
  pending = None  # (step, metrics) of the last dispatched step, checked one step late.

  def settle():
    """Fetches and checks the last dispatched step's metrics; returns them."""
    done_step, metrics = pending
    values = train_step_lib.as_float(metrics)
    _check_finite(done_step, values, checkpointer.latest_step())
    return done_step, values

  try:
    while step < config.num_steps:
      global_batch = mesh_lib.to_global_batch(batch, mesh)
      # Everything the step reads is on the devices already; a hidden copy is a bug.
      with jax.transfer_guard("disallow"):
        state, metrics = step_fn(state, global_batch, seed)
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
      if last and config.batch_norm_stats_batches:
        settle()
        stats_batches = itertools.islice(batches_from(0), config.batch_norm_stats_batches)
        state = batch_norm_stats.refresh(
            task, state, (mesh_lib.to_global_batch(b, mesh) for b in stats_batches))
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


def training_seconds(workdir: str) -> float:
  """Wall time of the training steps of a run, from the step rates in metrics.jsonl
  (compilation, evaluation and checkpoint pauses excluded)."""
  seconds, previous = 0.0, 0
  for record in read_metrics(workdir):
    if "steps_per_sec" in record:
      seconds += (record["step"] - previous) / record["steps_per_sec"]
      previous = record["step"]
  return seconds
