"""Precise BatchNorm statistics: the running averages replaced, after training, by the
equal-weight average of many training batches' statistics under the final parameters.

During training each (micro-)batch moves BatchNorm's running mean and variance by an
exponential moving average. With micro-batches of 2 images (`grad_accum_steps=4` at
batch 8, the step that fits NeuroSeg-III at 512 px in 2.3 GiB) those averages follow
few, noisy batches; on the ABO authors' split that cost 0.016-0.031 F1, and this
re-estimation on 200 batches of 8 recovered most of it (docs/RESULTS.md, "Micro-batches
and BatchNorm").

Flax's BatchNorm updates a running value r <- m r + (1 - m) s for a batch statistic s.
Each leaf's m is recovered from two forward passes of one batch (from zeros they give
(1 - m) s, from ones m + (1 - m) s), so any model whose state is BatchNorm running
averages works without naming its layers; a leaf the forward pass leaves alone (m = 1)
keeps its value.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

PyTree = Any


def precise_statistics(stats_fn: Callable[[PyTree, Any], PyTree], model_state: PyTree,
                       batches: Iterable[Any]) -> PyTree:
  """`model_state` with every running average replaced by the mean, over `batches`, of
  that batch's statistic.

  stats_fn(model_state, batch) -> the model state after one training-mode forward pass
  (same tree; called twice with the first batch, so it must be deterministic per batch).
  An empty `batches` returns `model_state` unchanged.
  """
  zeros = jax.tree.map(jnp.zeros_like, model_state)
  ones = jax.tree.map(jnp.ones_like, model_state)
  total = momentum = None
  count = 0
  for batch in batches:
    scaled = stats_fn(zeros, batch)  # (1 - m) s
    if momentum is None:
      momentum = jax.tree.map(jnp.subtract, stats_fn(ones, batch), scaled)
      total = zeros
    total = jax.tree.map(lambda t, r, m: t + r / jnp.where(m < 1, 1 - m, 1), total, scaled,
                         momentum)
    count += 1
  if not count:
    return model_state
  return jax.tree.map(lambda t, m, old: jnp.where(m < 1, t / count, old), total, momentum,
                      model_state)


def refresh(task, state: dict, batches: Iterable[Any]) -> dict:
  """`state` with its model state re-estimated by `precise_statistics` on `batches`
  (global arrays of whole training batches), through the task's training-mode loss.
  Batch k's dropout / drop-path key is fold_in(key(seed), k), the same in both of its
  passes."""
  loss_fn = jax.jit(lambda params, model_state, batch, rng, step:
                    task.loss_fn(params, model_state, batch, rng, step)[1][1])
  seed = jax.random.key(task.config.seed)
  keyed = ((batch, jax.random.fold_in(seed, k)) for k, batch in enumerate(batches))
  stats_fn = lambda model_state, item: loss_fn(state["params"], model_state, *item,
                                               state["step"])
  return {**state, "model_state": precise_statistics(stats_fn, state["model_state"], keyed)}
