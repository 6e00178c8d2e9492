"""FasterNet blocks (partial convolution) and the registry of C2f inner blocks (NHWC).

C2F_BLOCKS maps a backbone block name to a factory `make(drop_path_rate)`
returning the `block_fn` of `C2f`:
  c2f             plain YOLOv8 Bottleneck;
  c2f_ema         Bottleneck whose branch output goes through EMA before the
                  residual add: out = x + EMA(cv2(cv1(x))) (with shortcut;
                  EMA(cv2(cv1(x))) without). Not in the reference; our definition
                  for the ablation, built by analogy with the Faster-EMA block;
  c2f_faster      FasterBlock: out = x + DropPath(mlp(PConv(x)));
  c2f_faster_ema  FasterBlock with EMA: out = x + EMA(DropPath(mlp(PConv(x))))
                  (the NeuroSeg-III backbone block).
Faster blocks are always residual; C2f's `shortcut` has no effect on them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.models.ema_attention import EMA
from neuroseg_jax.models.yolo_blocks import Bottleneck, ConvBNAct, conv2d
from neuroseg_jax.registry import Registry

Dtype = Any


class PartialConv(nn.Module):
  """FasterNet partial convolution ("split_cat"): [B, H, W, C] -> [B, H, W, C].

  A bias-free 3x3 conv (`partial_conv3`) mixes the first C // n_div channels;
  the rest pass unchanged; channel order is preserved.
  """
  n_div: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mixed = x.shape[-1] // self.n_div
    head = conv2d(mixed, 3, use_bias=False, dtype=self.dtype, name="partial_conv3")(x[..., :mixed])
    return jnp.concatenate([head, x[..., mixed:]], axis=-1)


class DropPath(nn.Module):
  """Stochastic depth per sample: [B, ...] -> [B, ...].

  In training each sample is zeroed with probability `rate` and kept samples
  are scaled by 1 / (1 - rate); draws from the "drop_path" rng stream.
  The identity when `deterministic` or `rate == 0`.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng("drop_path"), keep_prob, mask_shape)
    return x * keep.astype(x.dtype) / keep_prob


class FasterBlock(nn.Module):
  """FasterNet block: [B, H, W, C] -> [B, H, W, C] with features == C.

  out = x + attention(DropPath(mlp(PConv(x)))), where mlp = ConvBNAct 1x1
  (C -> 2C, `mlp_0`) then a plain bias-free 1x1 conv (2C -> C, `mlp_1`), and
  `attention` is omitted when None. `shortcut` is accepted for the C2f block
  interface; the block is always residual.
  """
  features: int
  shortcut: bool = True
  drop_path_rate: float = 0.0
  attention: Callable[..., nn.Module] | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = PartialConv(dtype=self.dtype, name="spatial_mixing")(x)
    y = ConvBNAct(2 * self.features, dtype=self.dtype, name="mlp_0")(y, train)
    y = conv2d(self.features, 1, use_bias=False, dtype=self.dtype, name="mlp_1")(y)
    y = DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)
    if self.attention is not None:
      y = self.attention(dtype=self.dtype, name="attention")(y)
    return x + y


class FasterEMABlock(FasterBlock):
  """FasterBlock with EMA on the mlp output (NeuroSeg-III `Faster_Block_EMA`)."""
  attention: Callable[..., nn.Module] | None = EMA


C2F_BLOCKS: Registry[Callable[[float], Callable[..., nn.Module]]] = Registry("C2f block")


@C2F_BLOCKS.register("c2f")
def _bottleneck(drop_path_rate: float):
  del drop_path_rate  # YOLOv8's Bottleneck has no stochastic depth.
  return Bottleneck


@C2F_BLOCKS.register("c2f_ema")
def _bottleneck_ema(drop_path_rate: float):
  del drop_path_rate
  return functools.partial(Bottleneck, attention=EMA)


@C2F_BLOCKS.register("c2f_faster")
def _faster(drop_path_rate: float):
  return functools.partial(FasterBlock, drop_path_rate=drop_path_rate)


@C2F_BLOCKS.register("c2f_faster_ema")
def _faster_ema(drop_path_rate: float):
  return functools.partial(FasterEMABlock, drop_path_rate=drop_path_rate)
