"""The jitted update: loss, gradients (optionally accumulated), optimizer, hooks.

State is a plain dict of global arrays:
  {"step": int32 [], "params": ..., "model_state": ..., "opt": ...}
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from neuroseg_jax.errors import ConfigError
from neuroseg_jax.training import mesh as mesh_lib
from neuroseg_jax.training.task import Task

GRAD_ACCUM_FORMS = ("loop", "unroll", "calls")


def _micro_batches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B // num, ...] with micro-batch k = rows k, k + num, ...

  Interleaving keeps every device's rows spread over all micro-batches, so each
  micro-batch stays evenly split over the data axis.
  """

  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.moveaxis(x, 1, 0)

  return jax.tree.map(split, batch)


def _loss_and_grads(task: Task, params, model_state, batch, rng, step):
  """(loss, metrics, new model_state, gradients) of one (micro-)batch."""
  grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, rng, step)
  return loss, metrics, model_state, grads


def _apply_gradients(task: Task, tx: optax.GradientTransformation, schedule: Callable,
                     state: dict, loss, metrics: dict, model_state, grads) -> tuple[dict, dict]:
  """One optimizer update of `state` with `grads`; returns (new state, metrics)."""
  step = state["step"]
  updates, opt_state = tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  model_state = task.after_update(params, model_state, step)
  metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(step)}
  return {"step": step + 1, "params": params, "model_state": model_state,
          "opt": opt_state}, metrics


def _step_rng(seed: jax.Array, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: Callable,
                    grad_accum_steps: int = 1, unroll: bool = False) -> Callable:
  """Returns `train_step(state, batch, seed) -> (state, metrics)` (not yet jitted).

  With grad_accum_steps > 1 the batch is split into micro-batches whose gradients
  are summed before one update. As a loop (the default) only one micro-batch's
  activations are held: NeuroSeg-III at 512 px, batch 8, 4 micro-batches needs
  2.41 GiB of XLA temporaries against 4.99 GiB in one pass, but XLA:CPU runs the
  loop's body ~4.6x slower. `unroll` writes the micro-batches out one after another
  instead: no memory saving (4.96 GiB), and on the 2-core CPU 1.56x the images/s of
  one pass (smaller convolutions, and XLA:CPU runs independent micro-batches side by
  side on the cores; `experiments/benchmark_train_step.py`). `jit_train_step`'s "calls"
  form runs one compiled call per micro-batch: one micro-batch's memory (2.3 GiB for the
  whole process) at 0.84-0.87x the unrolled form's images/s.

  The run's seed (an int32 [] array) is an argument, not a captured constant, so
  runs that differ only in their seed share one compiled step (in process and in
  the persistent compilation cache). Step `s` uses `fold_in(key(seed), s)`, and
  micro-batch k `fold_in` of that with k.
  """

  def accumulated(params, model_state, batch, rng, step):
    def body(carry, micro):
      index, micro_batch = micro
      model_state, grad_sum, loss_sum, metric_sum = carry
      loss, metrics, model_state, grads = _loss_and_grads(
          task, params, model_state, micro_batch, jax.random.fold_in(rng, index), step)
      carry = (model_state, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss,
               jax.tree.map(jnp.add, metric_sum, metrics))
      return carry, None

    micro = _micro_batches(batch, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(
        lambda: _loss_and_grads(task, params, model_state, first, rng, step)[1])
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
    init = (model_state, zeros(params), jnp.zeros([], jnp.float32), zeros(metric_shapes))
    (model_state, grads, loss, metrics), _ = jax.lax.scan(
        body, init, (jnp.arange(grad_accum_steps), micro), unroll=unroll)
    scale = 1.0 / grad_accum_steps
    return (loss * scale, jax.tree.map(lambda m: m * scale, metrics), model_state,
            jax.tree.map(lambda g: g * scale, grads))

  def train_step(state: dict, batch: dict, seed: jax.Array) -> tuple[dict, dict]:
    rng = _step_rng(seed, state["step"])
    if grad_accum_steps == 1:
      computed = _loss_and_grads(task, state["params"], state["model_state"], batch, rng,
                                 state["step"])
    else:
      computed = accumulated(state["params"], state["model_state"], batch, rng, state["step"])
    return _apply_gradients(task, tx, schedule, state, *computed)

  return train_step


def _micro_batch_calls(task: Task, tx: optax.GradientTransformation, schedule: Callable,
                       num: int, state_shardings: Any, mesh: Mesh) -> Callable:
  """The "calls" form of `jit_train_step`: one compiled call per micro-batch, which
  adds its terms to the sums in place, then one compiled update. Each call takes the
  whole batch and its micro-batch index and cuts its rows inside, so the micro-batches
  are never held as separate arrays, and every micro-batch runs the same program, so
  its buffers fit where the previous one's were freed. Same values as the loop form."""
  replicated = mesh_lib.replicated(mesh)

  def terms(params, model_state, batch, seed, step, index):
    rng = jax.random.fold_in(_step_rng(seed, step), index)
    micro_batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, 0, False),
                               _micro_batches(batch, num))
    loss, metrics, model_state, grads = _loss_and_grads(task, params, model_state,
                                                        micro_batch, rng, step)
    return model_state, (grads, loss, metrics)

  def add(sums, params, model_state, batch, seed, step, index):
    model_state, new = terms(params, model_state, batch, seed, step, index)
    return model_state, jax.tree.map(jnp.add, sums, new)

  def finish(state, model_state, sums):
    grads, loss, metrics = jax.tree.map(lambda x: x / num, sums)
    return _apply_gradients(task, tx, schedule, state, loss, metrics, model_state, grads)

  sums_shardings = (state_shardings["params"], replicated, replicated)
  zeros = jax.jit(lambda *args: jax.tree.map(jnp.zeros_like, jax.eval_shape(terms, *args)[1]),
                  out_shardings=sums_shardings)
  add = jax.jit(add, out_shardings=(state_shardings["model_state"], sums_shardings),
                donate_argnums=(0, 2))
  # The new state reuses the old state's buffers; the sums have no output left to fill.
  finish = jax.jit(finish, out_shardings=(state_shardings, replicated), donate_argnums=0)
  indices = [mesh_lib.to_replicated(np.int32(k), mesh) for k in range(num)]

  def train_step(state: dict, batch: dict, seed: jax.Array) -> tuple[dict, dict]:
    args = (batch, seed, state["step"])
    model_state, sums = state["model_state"], zeros(state["params"], state["model_state"],
                                                    *args, indices[0])
    for index in indices:
      model_state, sums = add(sums, state["params"], model_state, *args, index)
    return finish(state, model_state, sums)

  return train_step


def jit_train_step(task: Task, tx: optax.GradientTransformation, schedule: Callable,
                   grad_accum_steps: int, grad_accum_form: str, state_shardings: Any,
                   mesh: Mesh) -> Callable:
  """The step as the engine runs it: `step(state, batch, seed) -> (state, metrics)` on
  global arrays (state donated). Forms of gradient accumulation (GRAD_ACCUM_FORMS):
  "loop" and "unroll" compile the whole step as one program (`make_train_step`);
  "calls" compiles one call per micro-batch and one update, so only one micro-batch's
  activations are held and each call is as fast as the unrolled form's parts."""
  if grad_accum_form not in GRAD_ACCUM_FORMS:
    raise ConfigError(f"grad_accum_form={grad_accum_form!r}; valid choices: "
                      f"{', '.join(GRAD_ACCUM_FORMS)}")
  if grad_accum_form == "calls" and grad_accum_steps > 1:
    return _micro_batch_calls(task, tx, schedule, grad_accum_steps, state_shardings, mesh)
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(make_train_step(task, tx, schedule, grad_accum_steps,
                                 grad_accum_form == "unroll"),
                 in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def initial_state(task: Task, tx: optax.GradientTransformation, rng: jax.Array,
                  example_batch: dict) -> dict:
  """Builds step-0 state (call under jit / eval_shape)."""
  variables = dict(task.init_variables(rng, example_batch))
  params = variables.pop("params")
  model_state = task.initial_model_state(params, variables)
  return {"step": jnp.zeros([], jnp.int32), "params": params, "model_state": model_state,
          "opt": tx.init(params)}


def as_float(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}
