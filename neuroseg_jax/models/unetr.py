"""UNETR-style segmentation decoder on a 2D or 3D ViT encoder (Hatamizadeh et al. 2022).

Layout for a patch (1, 16, 16) and skip blocks (3, 6, 9) of a depth-12 ViT (the EM-MAE
fine-tuning setting):

  level 4 (token grid, /1x16x16): encoder output (block 12 + final LayerNorm)
  level 3 (/1x8x8):   block 9  -> 1 up step,  512 ch  | decoder: up, concat, conv block
  level 2 (/1x4x4):   block 6  -> 2 up steps, 256 ch  | decoder: up, concat, conv block
  level 1 (/1x2x2):   block 3  -> 3 up steps, 128 ch  | decoder: up, concat, conv block
  level 0 (full res): raw input -> 32 -> 64 ch        | decoder: up, concat, conv block
  head: 1x1x1 conv -> out_channels

Upsampling respects anisotropic patches: each axis needs log2(patch) x2 steps; the
number of levels L is the largest of these, and an axis with fewer steps is upsampled
in the coarse steps only (so the fine levels of a (4, 16, 16) patch are in-plane only,
as in U-Nets for anisotropic EM). Every step is a transposed convolution with
kernel = stride, e.g. (1, 2, 2) for 1x16x16 patches.

Choices:
  * Norm: BatchNorm (as in the reference UNETR fine-tuning). At inference it is a fixed
    affine map, so overlapping sliding windows agree and blend without seams, which
    per-window statistics (InstanceNorm / GroupNorm) would not give. Running statistics
    live in the "batch_stats" collection: pass `train=True` with
    `mutable=["batch_stats"]` while training.
  * Position embedding: kept by default (`use_position_embedding=True`). The encoder was
    pre-trained with the fixed sine-cosine embedding added to every token and
    fine-tuning windows have the pre-training crop size, so keeping it feeds the
    pre-trained blocks the inputs they were trained on. The reference drops it; False
    reproduces that (same parameters, embedding omitted).
  * The class token (if the encoder has one) takes part in attention, as in
    pre-training, and is dropped before the tokens are reshaped into grids.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.conv_blocks import ConvBlock, ConvNormReLU, upsample
from neuroseg_jax.models.vit import ViTEncoder


def upsampling_strides(patch_size: Sequence[int]) -> list[tuple[int, ...]]:
  """Per-step strides, coarse to fine, that take the token grid back to full resolution.

  E.g. (1, 16, 16) -> 4 x (1, 2, 2); (4, 16, 16) -> 2 x (2, 2, 2) then 2 x (1, 2, 2).
  """
  steps = []
  for p in patch_size:
    if p < 1 or p & (p - 1):
      raise ValueError(f"UNETR needs power-of-two patch sizes, got {tuple(patch_size)}")
    steps.append(int(math.log2(p)))
  levels = max(steps)
  if levels == 0:
    raise ValueError(f"patch size {tuple(patch_size)} leaves nothing to upsample")
  return [tuple(2 if i < s else 1 for s in steps) for i in range(levels)]


def default_skip_blocks(depth: int, levels: int) -> tuple[int, ...]:
  """Evenly spaced 1-based blocks for the levels-1 skips, e.g. (3, 6, 9) for 12 and 4."""
  return tuple(max(1, depth * k // levels) for k in range(1, levels))


class SkipProjection(nn.Module):
  """Block tokens on their grid -> a decoder level: [B, g0, g1, g2, width] ->
  [B, g0 * prod s0, ..., features], one (transposed conv, ConvNormReLU) per stride."""
  features: int
  strides: Sequence[Sequence[int]]
  norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for stride in self.strides:
      x = upsample(self.features, stride, self.dtype)(x)
      x = ConvNormReLU(self.features, self.norm_momentum, self.dtype)(x, train=train)
    return x


class UNETR(nn.Module):
  """ViT encoder + UNETR decoder: [B, D, H, W, C] -> [B, D, H, W, out_channels] float32
  for a 3-D patch size; [B, H, W, C] -> [B, H, W, out_channels] for a 2-D one.

  Spatial sizes must be multiples of the encoder's patch size. Submodule `encoder` is the
  given ViTEncoder, so a pre-trained MAE's params["encoder"] fits (copy it with
  `training/transfer.py`). Decoder level k (0 = full resolution) has
  `decoder_width * 2**k` channels (64 -> 64/128/256/512 as in the reference); the raw
  input branch has decoder_width // 2 then decoder_width. `skip_blocks` (1-based, one
  per intermediate level, non-decreasing) defaults to evenly spaced blocks; the deepest
  level is always the encoder output. `dtype` is the decoder's compute dtype (the
  encoder carries its own); parameters stay float32. Bad input shapes raise DataError.
  """
  encoder: ViTEncoder
  out_channels: int
  decoder_width: int = 64
  skip_blocks: tuple[int, ...] | None = None
  use_position_embedding: bool = True
  norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  def _skip_blocks(self, levels: int) -> tuple[int, ...]:
    blocks = tuple(self.skip_blocks or default_skip_blocks(self.encoder.depth, levels))
    if (len(blocks) != levels - 1 or any(b < 1 or b > self.encoder.depth for b in blocks)
        or any(a > b for a, b in zip(blocks, blocks[1:]))):
      raise ValueError(f"skip_blocks must be {levels - 1} non-decreasing blocks in 1..."
                       f"{self.encoder.depth} for patch {tuple(self.encoder.patch_size)}, "
                       f"got {blocks}")
    return blocks

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    rank = len(self.encoder.patch_size)
    if x.ndim != rank + 2:
      raise DataError("UNETR input", f"expected [B, {', '.join('DHW'[3 - rank:])}, C] for patch "
                      f"size {tuple(self.encoder.patch_size)}, got shape {x.shape}")
    strides = upsampling_strides(self.encoder.patch_size)
    levels = len(strides)
    grid = self.encoder.grid_shape(x.shape[1:-1])
    final, block_outputs = self.encoder(x, train=train,
                                        position_embedding=self.use_position_embedding,
                                        return_block_outputs=True)
    first = 1 if self.encoder.use_class_token else 0

    def to_grid(tokens):
      return tokens[:, first:].reshape(x.shape[0], *grid, tokens.shape[-1])

    # Skips: level k (1 <= k < levels) from block skip_blocks[k - 1], then the raw input.
    # strides[i] leads from level levels - i to level levels - i - 1.
    raw = x.astype(self.dtype)
    for features in (self.decoder_width // 2, self.decoder_width):
      raw = ConvNormReLU(features, self.norm_momentum, self.dtype)(raw, train=train)
    skips = {0: raw}
    for k, block in enumerate(self._skip_blocks(levels), start=1):
      skips[k] = SkipProjection(self.decoder_width * 2**k, strides[:levels - k],
                                self.norm_momentum, self.dtype)(
                                    to_grid(block_outputs[block - 1]), train=train)
    y = to_grid(final)
    for k in reversed(range(levels)):
      features = self.decoder_width * 2**k
      y = upsample(features, strides[levels - 1 - k], self.dtype)(y)
      y = jnp.concatenate([y, skips[k]], axis=-1)
      y = ConvBlock(features, self.norm_momentum, self.dtype)(y, train=train)
    y = nn.Conv(self.out_channels, (1,) * rank, dtype=self.dtype, name="head")(y)
    return y.astype(jnp.float32)

