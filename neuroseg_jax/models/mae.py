"""Masked autoencoder (MAE, He et al. 2022) around `ViTEncoder`, for 2D and 3D inputs.

Per example, a random subset of round((1 - mask_ratio) * N) tokens stays visible
(shuffle-and-keep: argsort of uniform noise, static shapes); the encoder sees
only those, a lighter decoder fills the rest with a learned mask token, adds its
own fixed position embedding, and predicts every voxel of every patch.

Patch layout: `patchify` flattens each patch as (p_0, ..., p_{n-1}, C) in C
order, patches row-major over the token grid, which is the token order of
`ViTEncoder.embed`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.position_embeddings import sincos_position_embedding
from neuroseg_jax.models.vit import LAYER_NORM_EPSILON, TransformerBlock, ViTEncoder


class MAEOutput(NamedTuple):
  prediction: jax.Array   # [B, N, prod(patch_size) * C] predicted patches (all tokens).
  mask: jax.Array         # [B, N] float, 1 = masked (hidden from the encoder), 0 = visible.
  ids_restore: jax.Array  # [B, N] int, position of each grid token in the shuffled order.


def num_visible_tokens(num_tokens: int, mask_ratio: float) -> int:
  """round((1 - mask_ratio) * num_tokens), checked to be in [1, num_tokens]."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  kept = int(round((1.0 - mask_ratio) * num_tokens))
  if kept < 1:
    raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token out of {num_tokens}")
  return kept


def random_masking(rng: jax.Array, batch_size: int, num_tokens: int, mask_ratio: float):
  """Independent random token subsets per example.

  Returns:
    keep_indices: [B, K] int32 visible token indices (grid order), K = num_visible_tokens.
    mask: [B, N] float32, 1 = masked.
    ids_restore: [B, N] int32 with shuffled[ids_restore] == grid order, i.e.
      `take_along_axis(concat([visible, masked]), ids_restore)` unshuffles.
  """
  kept = num_visible_tokens(num_tokens, mask_ratio)
  noise = jax.random.uniform(rng, (batch_size, num_tokens))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  shuffled_mask = (jnp.arange(num_tokens) >= kept).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, (batch_size, num_tokens)),
                             ids_restore, axis=1)
  return ids_shuffle[:, :kept], mask, ids_restore


def patchify(x: jax.Array, patch_size: Sequence[int]) -> jax.Array:
  """[B, *spatial, C] -> [B, N, prod(patch_size) * C] (spatial divisible by patch_size)."""
  batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
  grid = [s // p for s, p in zip(spatial, patch_size)]
  split = [batch] + [d for g, p in zip(grid, patch_size) for d in (g, p)] + [channels]
  ndim = len(grid)
  order = [0] + [1 + 2 * i for i in range(ndim)] + [2 + 2 * i for i in range(ndim)] + [1 + 2 * ndim]
  return x.reshape(split).transpose(order).reshape(batch, math.prod(grid), -1)


def unpatchify(patches: jax.Array, grid_shape: Sequence[int],
               patch_size: Sequence[int]) -> jax.Array:
  """[B, N, prod(patch_size) * C] -> [B, *(grid_shape * patch_size), C]; inverse of patchify."""
  batch, ndim = patches.shape[0], len(grid_shape)
  channels = patches.shape[-1] // math.prod(patch_size)
  x = patches.reshape([batch, *grid_shape, *patch_size, channels])
  order = [0] + [d for i in range(ndim) for d in (1 + i, 1 + ndim + i)] + [1 + 2 * ndim]
  spatial = [g * p for g, p in zip(grid_shape, patch_size)]
  return x.transpose(order).reshape(batch, *spatial, channels)


class MAE(nn.Module):
  """ViT masked autoencoder; rank (2D or 3D) set by `len(patch_size)`.

  Submodules: `encoder` (ViTEncoder; fine-tuning copies params["encoder"]),
  `decoder_embed`, `mask_token` [1, 1, decoder_width], `decoder_blocks_{i}`,
  `decoder_norm`, `decoder_pred`. Calling needs a "masking" rng.
  """
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  patch_size: tuple = (1, 16, 16)
  use_class_token: bool = True
  in_channels: int = 1
  decoder_width: int = 384
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mask_ratio: float = 0.75
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ViTEncoder(width=self.width, depth=self.depth, num_heads=self.num_heads,
                              mlp_ratio=self.mlp_ratio, patch_size=tuple(self.patch_size),
                              use_class_token=self.use_class_token, dtype=self.dtype)
    self.decoder_embed = nn.Dense(self.decoder_width, dtype=self.dtype)
    self.mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                 (1, 1, self.decoder_width))
    self.decoder_blocks = [
        TransformerBlock(self.decoder_num_heads, self.mlp_ratio, dtype=self.dtype)
        for _ in range(self.decoder_depth)]
    self.decoder_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype)
    self.decoder_pred = nn.Dense(int(np.prod(self.patch_size)) * self.in_channels, dtype=self.dtype)

  def __call__(self, x: jax.Array, *, train: bool = False) -> MAEOutput:
    """x: [B, *spatial, in_channels] -> MAEOutput (prediction in float32)."""
    if x.shape[-1] != self.in_channels:
      raise DataError("MAE input", f"expected {self.in_channels} channel(s), got shape {x.shape}")
    grid = self.encoder.grid_shape(x.shape[1:-1])
    keep_indices, mask, ids_restore = random_masking(
        self.make_rng("masking"), x.shape[0], math.prod(grid), self.mask_ratio)
    latent = self.encoder(x, train=train, keep_indices=keep_indices)
    prediction = self.decode(latent, ids_restore, grid, train=train)
    return MAEOutput(prediction.astype(jnp.float32), mask, ids_restore)

  def decode(self, latent: jax.Array, ids_restore: jax.Array, grid: Sequence[int], *,
             train: bool = False) -> jax.Array:
    """Encoder tokens [B, (1+)K, width] -> predicted patches [B, N, prod(patch_size) * C]."""
    y = self.decoder_embed(latent)
    if self.use_class_token:
      cls, y = y[:, :1], y[:, 1:]
    batch, num_tokens = ids_restore.shape
    mask_tokens = jnp.broadcast_to(self.mask_token.astype(y.dtype),
                                   (batch, num_tokens - y.shape[1], self.decoder_width))
    y = jnp.concatenate([y, mask_tokens], axis=1)
    y = jnp.take_along_axis(y, ids_restore[..., None], axis=1)  # back to grid order
    y = y + jnp.asarray(sincos_position_embedding(grid, self.decoder_width), y.dtype)
    if self.use_class_token:
      y = jnp.concatenate([cls, y], axis=1)
    for block in self.decoder_blocks:
      y = block(y, train=train)
    y = self.decoder_pred(self.decoder_norm(y))
    return y[:, 1:] if self.use_class_token else y
