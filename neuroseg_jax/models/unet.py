"""A plain convolutional U-Net (Ronneberger et al. 2015), the from-scratch baseline.

[B, H, W, C] (or [B, D, H, W, C]) -> [B, H, W, out_channels] float32. Level k
(0 = full resolution) has `width * 2**k` channels and two 3x3 ConvNormReLU; the
encoder halves every spatial axis between levels by 2x max-pooling, the decoder
doubles it by a 2x transposed convolution and concatenates the encoder level
(`conv_blocks.py`). `levels` = 4 gives 3 poolings, so spatial sizes must be
multiples of 2**(levels - 1). No pre-training: every table reports it beside the
ViT models so that it says where MAE pre-training stands.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.conv_blocks import ConvBlock, spatial_rank, upsample


class UNet(nn.Module):
  """U-Net of `levels` levels, `width` channels at full resolution (see module doc)."""
  out_channels: int
  width: int = 16
  levels: int = 4
  norm_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    rank, factor = spatial_rank(x), 2 ** (self.levels - 1)
    if rank not in (2, 3) or any(s % factor for s in x.shape[1:-1]):
      raise DataError("U-Net input", f"expected [B, H, W, C] or [B, D, H, W, C] with spatial "
                      f"sizes multiples of {factor}, got shape {x.shape}")
    window = (2,) * rank
    y, skips = x.astype(self.dtype), []
    for k in range(self.levels):
      if k:
        y = nn.max_pool(y, window, strides=window)
      y = ConvBlock(self.width * 2**k, self.norm_momentum, self.dtype)(y, train=train)
      skips.append(y)
    for k in reversed(range(self.levels - 1)):
      y = upsample(self.width * 2**k, window, self.dtype)(y)
      y = jnp.concatenate([y, skips[k]], axis=-1)
      y = ConvBlock(self.width * 2**k, self.norm_momentum, self.dtype)(y, train=train)
    y = nn.Conv(self.out_channels, (1,) * rank, dtype=self.dtype, name="head")(y)
    return y.astype(jnp.float32)
