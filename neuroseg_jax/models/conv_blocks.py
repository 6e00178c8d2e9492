"""Convolution blocks shared by the convolutional decoders (UNETR) and the U-Net;
`unfold_product` also computes the YOLO prototype upsample (`segment_head`).

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


def unfold_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """out[b, s * y + t, o] = sum_c x[b, y, c] kernel[t, c, o] along every spatial axis.

  x: [B, *S, C]; kernel: [*s, C, O] -> [B, *(S * s), O]. A transposed convolution whose
  windows do not overlap (kernel = stride), as one matrix product and a reshape.
  """
  rank = spatial_rank(x)
  y = jnp.tensordot(x, kernel, axes=([rank + 1], [rank]))        # [B, *S, *s, O]
  interleaved = [0] + [a for axis in range(rank) for a in (1 + axis, 1 + rank + axis)]
  y = y.transpose(*interleaved, 2 * rank + 1)                    # [B, S1, s1, S2, s2, ..., O]
  size = [n * s for n, s in zip(x.shape[1:-1], kernel.shape[:rank])]
  return y.reshape(x.shape[0], *size, kernel.shape[-1])


class ConvTranspose(nn.Module):
  """Transposed convolution whose kernel equals its stride: [B, *S, C] -> [B, *(S * s), features].

  flax's `nn.ConvTranspose(features, s, strides=s, padding="VALID")` with the same
  parameters, names, initialisers and kernel orientation (flipped: output s * y + t
  reads kernel[s - 1 - t]), so checkpoints load either way, computed by
  `unfold_product`. XLA computes flax's layer as a convolution over the dilated input,
  whose kernel gradient it runs as a slow base-dilated convolution on the CPU (a third
  of a UNETR step, RESULTS.md). kernel: [*s, C, features].
  """
  features: int
  stride: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.stride, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    flipped = jnp.flip(kernel, axis=tuple(range(spatial_rank(x))))
    return (unfold_product(x.astype(self.dtype), flipped.astype(self.dtype))
            + bias.astype(self.dtype))


def upsample(features: int, stride: Sequence[int], dtype, name: str | None = None
             ) -> ConvTranspose:
  """Transposed conv with kernel = stride: [B, *s, C] -> [B, *(s * stride), features]."""
  return ConvTranspose(features, tuple(stride), dtype=dtype, name=name)
