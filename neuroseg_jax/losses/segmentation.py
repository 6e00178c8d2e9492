"""Dense segmentation losses for 3D EM targets (pure jnp, jit-able).

All functions take channels-last `[B, D, H, W, C]` logits (or raw outputs) and targets
of the same shape, compute in float32 and return scalars. Optional weights:
  channel_weights: [C], one factor per output channel;
  voxel_weights:   broadcastable to [B, D, H, W, C] (e.g. [B, D, H, W, 1] or full), such
                   as `balanced_voxel_weights` or a validity mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _weights(shape, *factors) -> jax.Array:
  """The product of the factors that are not None, broadcast to `shape` ([B, D, H, W, C])."""
  weights = jnp.ones(shape, jnp.float32)
  for factor in factors:
    if factor is not None:
      weights = weights * jnp.asarray(factor, jnp.float32)
  return weights


def balanced_voxel_weights(targets: jax.Array, eps: float = 1e-2) -> jax.Array:
  """Class-balancing weights: [B, D, H, W, C] binary targets -> same shape float32.

  Per example and channel with foreground fraction p (clipped to [eps, 1 - eps]),
  foreground voxels weigh 0.5 / p and background ones 0.5 / (1 - p): both classes then
  carry half of the total weight and the weights average to 1.
  """
  targets = jnp.asarray(targets, jnp.float32)
  positive = targets > 0.5
  fraction = jnp.mean(positive, axis=(1, 2, 3), keepdims=True)
  fraction = jnp.clip(fraction, eps, 1.0 - eps)
  return jnp.where(positive, 0.5 / fraction, 0.5 / (1.0 - fraction))


def weighted_bce_with_logits(logits, targets, channel_weights=None, voxel_weights=None):
  """Mean over all elements of weight * BCE(sigmoid(logits), targets): -> scalar."""
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  # log(1 + exp(-|x|)) + max(x, 0) - x t, the stable form of the cross-entropy.
  per_element = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.mean(per_element * _weights(logits.shape, channel_weights, voxel_weights))


def soft_dice_loss(logits, targets, channel_weights=None, voxel_weights=None, smooth=1.0):
  """1 - soft Dice of sigmoid(logits), per channel over batch and space: -> scalar.

  dice_c = (2 sum w p t + smooth) / (sum w p + sum w t + smooth) with p = sigmoid(logits),
  sums over B, D, H, W; the loss is the channel_weights-weighted mean of 1 - dice_c.
  Voxel weights act as (soft) masks.
  """
  logits = jnp.asarray(logits, jnp.float32)
  probs = jax.nn.sigmoid(logits)
  targets = jnp.asarray(targets, jnp.float32)
  weights = _weights(logits.shape, None, voxel_weights)
  axes = tuple(range(logits.ndim - 1))
  overlap = jnp.sum(weights * probs * targets, axis=axes)
  total = jnp.sum(weights * probs, axis=axes) + jnp.sum(weights * targets, axis=axes)
  per_channel = 1.0 - (2.0 * overlap + smooth) / (total + smooth)
  if channel_weights is None:
    return jnp.mean(per_channel)
  channel_weights = jnp.asarray(channel_weights, jnp.float32)
  return jnp.sum(channel_weights * per_channel) / jnp.sum(channel_weights)


def bce_dice_loss(logits, targets, *, bce_weight=1.0, dice_weight=0.5, channel_weights=None,
                  voxel_weights=None, mask=None):
  """bce_weight * weighted BCE + dice_weight * soft Dice (the UNETR fine-tuning loss).

  voxel_weights (e.g. class balancing) weigh the BCE term only; `mask` (broadcastable to
  [B, D, H, W, C], e.g. `affinity_valid_mask`) removes elements from both terms.
  Returns (loss scalar, {"bce": scalar, "dice": scalar}).
  """
  bce_weights = _weights(jnp.shape(logits), voxel_weights, mask)
  bce = weighted_bce_with_logits(logits, targets, channel_weights, bce_weights)
  dice = soft_dice_loss(logits, targets, channel_weights, mask)
  return bce_weight * bce + dice_weight * dice, {"bce": bce, "dice": dice}


def weighted_mse_tanh(outputs, targets, voxel_weights=None):
  """Mean of weight * (tanh(outputs) - targets)^2 for targets in [-1, 1]: -> scalar."""
  outputs = jnp.asarray(outputs, jnp.float32)
  error = jnp.square(jnp.tanh(outputs) - jnp.asarray(targets, jnp.float32))
  return jnp.mean(error * _weights(outputs.shape, None, voxel_weights))
