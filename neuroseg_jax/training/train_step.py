"""The jitted update: loss, gradients (optionally accumulated), optimizer, hooks.

State is a plain dict of global arrays:
  {"step": int32 [], "params": ..., "model_state": ..., "opt": ...}
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from neuroseg_jax.training.task import Task


def _micro_batches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B // num, ...] with micro-batch k = rows k, k + num, ...

  Interleaving keeps every device's rows spread over all micro-batches, so each
  micro-batch stays evenly split over the data axis.
  """

  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.moveaxis(x, 1, 0)

  return jax.tree.map(split, batch)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: Callable,
                    grad_accum_steps: int = 1, unroll: bool = False) -> Callable:
  """Returns `train_step(state, batch, seed) -> (state, metrics)` (not yet jitted).

  With grad_accum_steps > 1 the batch is split into micro-batches whose gradients
  are summed before one update. As a loop (the default) only one micro-batch's
  activations are held: NeuroSeg-III at 512 px, batch 8, 4 micro-batches needs
  2.41 GiB of XLA temporaries against 4.99 GiB in one pass, but XLA:CPU runs the
  loop's body ~4.6x slower. `unroll` writes the micro-batches out one after another
  instead: no memory saving (4.96 GiB), and on the 2-core CPU 1.56x the images/s of
  one pass (smaller convolutions; `experiments/benchmark_train_step.py`).

  The run's seed (an int32 [] array) is an argument, not a captured constant, so
  runs that differ only in their seed share one compiled step (in process and in
  the persistent compilation cache). Step `s` uses `fold_in(key(seed), s)`.
  """

  def loss_and_grads(params, model_state, batch, rng, step):
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
    (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, rng, step)
    return loss, metrics, model_state, grads

  def accumulated(params, model_state, batch, rng, step):
    def body(carry, micro):
      index, micro_batch = micro
      model_state, grad_sum, loss_sum, metric_sum = carry
      loss, metrics, model_state, grads = loss_and_grads(
          params, model_state, micro_batch, jax.random.fold_in(rng, index), step)
      carry = (model_state, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss,
               jax.tree.map(jnp.add, metric_sum, metrics))
      return carry, None

    micro = _micro_batches(batch, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(
        lambda: loss_and_grads(params, model_state, first, rng, step)[1])
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
    init = (model_state, zeros(params), jnp.zeros([], jnp.float32), zeros(metric_shapes))
    (model_state, grads, loss, metrics), _ = jax.lax.scan(
        body, init, (jnp.arange(grad_accum_steps), micro), unroll=unroll)
    scale = 1.0 / grad_accum_steps
    return (loss * scale, jax.tree.map(lambda m: m * scale, metrics), model_state,
            jax.tree.map(lambda g: g * scale, grads))

  compute = loss_and_grads if grad_accum_steps == 1 else accumulated

  def train_step(state: dict, batch: dict, seed: jax.Array) -> tuple[dict, dict]:
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    loss, metrics, model_state, grads = compute(state["params"], state["model_state"], batch,
                                                rng, step)
    updates, opt_state = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    model_state = task.after_update(params, model_state, step)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(step)}
    new_state = {"step": step + 1, "params": params, "model_state": model_state,
                 "opt": opt_state}
    return new_state, metrics

  return train_step


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
