"""Optax optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from neuroseg_jax.errors import ConfigError
from neuroseg_jax.registry import Registry

SCHEDULES = Registry("learning-rate schedule")
OPTIMIZERS = Registry("optimizer")


@SCHEDULES.register("cosine")
def _cosine(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(num_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.min_lr_ratio)


@SCHEDULES.register("constant")
def _constant(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  del num_steps
  if cfg.warmup_steps <= 0:
    return optax.constant_schedule(cfg.lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
      [cfg.warmup_steps])


@OPTIMIZERS.register("adamw")
def _adamw(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov))


def freeze_subtree(name: str, steps: int) -> optax.GradientTransformation:
  """Zeroes the updates of top-level subtree `name` for the first `steps` steps (-1: always)."""

  def init(params):
    if name not in params:
      raise ConfigError(f"optimizer.freeze={name!r} is not a top-level parameter subtree; "
                       f"valid choices: {', '.join(sorted(params))}")
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    frozen = jnp.bool_(True) if steps < 0 else state.count < steps
    updates = dict(updates)
    updates[name] = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), updates[name])
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def layer_decay_scales(params: Any, decay: float, subtree: str = "encoder") -> Any:
  """Learning-rate scales per parameter for layer-wise decay of a ViT encoder (BEiT / MAE
  fine-tuning). In `params[subtree]`, block `blocks_{i}` (0-based) gets decay**(depth - i),
  the patch embedding and class token decay**(depth + 1); everything else (the final norm,
  the decoder) gets 1, so the layers nearest the input move least."""
  if subtree not in params:
    raise ConfigError(f"optimizer.layer_decay needs a top-level {subtree!r} parameter subtree "
                      f"(a ViT encoder); this model has: {', '.join(sorted(params))}")
  depth = sum(1 for name in params[subtree] if name.startswith("blocks_"))

  def scale(path, leaf):
    del leaf
    names = [getattr(key, "key", str(key)) for key in path]
    if names[0] != subtree:
      return 1.0
    if names[1].startswith("blocks_"):
      return decay ** (depth - int(names[1].removeprefix("blocks_")))
    if names[1] in ("patch_embed", "cls_token"):
      return decay ** (depth + 1)
    return 1.0

  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer_decay(decay: float, subtree: str = "encoder") -> optax.GradientTransformation:
  """Multiplies each update by its `layer_decay_scales` factor (the whole AdamW step,
  weight decay included, as a per-layer learning rate would)."""

  def init(params):
    layer_decay_scales(params, decay, subtree)  # fails early on a model without the subtree
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, decay, subtree)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """Returns (transformation, learning-rate schedule) for `config.optimizer`."""
  cfg = config.optimizer
  schedule = SCHEDULES.get(cfg.schedule)(cfg, config.num_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(OPTIMIZERS.get(cfg.name)(cfg, schedule))
  if cfg.layer_decay != 1.0:
    parts.append(scale_by_layer_decay(cfg.layer_decay))
  if cfg.freeze:
    parts.append(freeze_subtree(cfg.freeze, cfg.freeze_steps))
  return optax.chain(*parts), schedule
