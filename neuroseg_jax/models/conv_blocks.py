"""Convolution blocks shared by the convolutional decoders (UNETR) and the U-Net.

Every block works on 2-D images [B, H, W, C] and 3-D volumes [B, D, H, W, C] alike:
kernels are 3 (or the given stride) along every spatial axis of the input.

BatchNorm, not a per-window norm: at inference it is a fixed affine map, so
overlapping sliding windows agree and blend without seams. Running statistics live
in the "batch_stats" collection (`train=True` with `mutable=["batch_stats"]`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def spatial_rank(x: jax.Array) -> int:
  """Number of spatial axes of a channels-last batch [B, *spatial, C]."""
  return x.ndim - 2


class ConvNormReLU(nn.Module):
  """[B, *spatial, C] -> 3^n conv (no bias) -> BatchNorm -> ReLU -> [B, *spatial, features]."""
  features: int
  norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3,) * spatial_rank(x), padding="SAME", use_bias=False,
                dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.norm_momentum,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class ConvBlock(nn.Module):
  """Two ConvNormReLU: [B, *spatial, C] -> [B, *spatial, features]."""
  features: int
  norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for _ in range(2):
      x = ConvNormReLU(self.features, self.norm_momentum, self.dtype)(x, train=train)
    return x


def upsample(features: int, stride: Sequence[int], dtype, name: str | None = None
             ) -> nn.ConvTranspose:
  """Transposed conv with kernel = stride: [B, *s, C] -> [B, *(s * stride), features]."""
  return nn.ConvTranspose(features, tuple(stride), strides=tuple(stride), padding="VALID",
                          dtype=dtype, name=name)
