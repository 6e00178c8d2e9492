"""Masked-patch reconstruction loss of a masked autoencoder, and its predict-the-mean baseline.

Shapes: patches / predictions [B, N, P] (P = voxels per patch x channels, see
`neuroseg_jax.models.mae.patchify`), mask [B, N] with 1 = masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_PIX_EPSILON = 1e-6


def reconstruction_targets(patches: jax.Array, norm_pix: bool) -> jax.Array:
  """[B, N, P] patches -> targets; with norm_pix each patch is (x - mean) / sqrt(var + 1e-6)."""
  patches = patches.astype(jnp.float32)
  if not norm_pix:
    return patches
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + NORM_PIX_EPSILON)


def per_patch_mse(prediction: jax.Array, targets: jax.Array) -> jax.Array:
  """[B, N, P] prediction (or a broadcastable constant) and targets -> [B, N] float32 MSE."""
  return jnp.mean(jnp.square(jnp.asarray(prediction, jnp.float32) - targets), axis=-1)


def masked_mse(prediction: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked patches of the per-patch mean squared error; scalar float32.

  Visible patches (mask 0) contribute nothing; an all-visible mask gives 0.
  """
  per_patch = per_patch_mse(prediction, targets)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_reconstruction_loss(prediction: jax.Array, patches: jax.Array, mask: jax.Array,
                               norm_pix: bool = True) -> jax.Array:
  """MAE loss: MSE between predicted and (optionally per-patch normalised) patches, masked only.

  `prediction` is [B, N, P] or anything broadcastable to it (e.g. a constant).
  """
  return masked_mse(prediction, reconstruction_targets(patches, norm_pix), mask)


def predict_the_mean_loss(patches: jax.Array, mask: jax.Array, norm_pix: bool = True,
                          data_mean: float | jax.Array | None = None) -> jax.Array:
  """The same loss for a model that predicts the mean target everywhere.

  With norm_pix the mean target of every patch is 0, so the prediction is 0 and the
  loss is about 1 (exactly var / (var + 1e-6) per patch). Without norm_pix the
  prediction is `data_mean` (the dataset mean intensity), or the mean of
  `patches` when it is None. A trained model should sit well below this.
  """
  if norm_pix:
    constant = 0.0
  else:
    constant = jnp.mean(patches.astype(jnp.float32)) if data_mean is None else data_mean
  return masked_reconstruction_loss(constant, patches, mask, norm_pix)


def denormalize_prediction(prediction: jax.Array, patches: jax.Array, norm_pix: bool) -> jax.Array:
  """Predicted targets [B, N, P] -> voxel values, undoing norm-pix with the true patches' stats."""
  if not norm_pix:
    return prediction
  patches = patches.astype(jnp.float32)
  mean = patches.mean(axis=-1, keepdims=True)
  std = jnp.sqrt(patches.var(axis=-1, keepdims=True) + NORM_PIX_EPSILON)
  return prediction * std + mean
