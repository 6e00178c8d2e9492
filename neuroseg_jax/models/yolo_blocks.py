"""YOLOv8 building blocks (NHWC): Conv-BN-SiLU, Bottleneck, C2f, SPPF, compound scaling.

Numerics follow ultralytics 8.0.x exactly in inference mode:
  * convolutions are bias-free, zero padded by kernel // 2, followed by
    BatchNorm (eps 1e-3, running-average momentum 0.97 in Flax terms, i.e.
    0.03 in PyTorch terms) and SiLU;
  * C2f splits its expanded features into two halves, feeds the last element of
    a growing list through each inner block, and fuses the whole list.
One training-mode difference: Flax updates the running variance with the
biased batch variance, PyTorch with the unbiased one (a factor N / (N - 1),
N = B * H * W >= 64 for every layer of these models at 256 px).

Kernels are initialised like PyTorch's default (kaiming-uniform with a = sqrt(5),
i.e. U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))) so training starts as in the
reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.models import matmul_kernel_grad
from neuroseg_jax.registry import Registry

Dtype = Any

# PyTorch's default Conv2d init: U(-b, b), b = 1 / sqrt(fan_in).
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BN_MOMENTUM = 0.97
BN_EPSILON = 1e-3


def torch_bias_init(fan_in: int) -> Callable:
  """PyTorch's default conv bias init, U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv2d(features: int, kernel_size: int, *, use_bias: bool, dtype: Dtype,
           name: str | None = None, strides: int = 1,
           bias_init: Callable | None = None) -> nn.Conv:
  """A square NHWC convolution with PyTorch's "same" padding (kernel // 2) and init; its
  kernel gradient is taken as matrix products (`matmul_kernel_grad`)."""
  pad = kernel_size // 2
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=TORCH_CONV_INIT,
                 bias_init=bias_init or nn.initializers.zeros, name=name,
                 conv_general_dilated=matmul_kernel_grad.conv_general_dilated)


class ConvBNAct(nn.Module):
  """Bias-free conv -> BatchNorm -> SiLU (ultralytics `Conv`).

  [B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features].
  Submodules `conv` and `bn` carry the PyTorch names.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv2d(self.features, self.kernel_size, strides=self.strides, use_bias=False,
               dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
    return nn.silu(x)


class Bottleneck(nn.Module):
  """Two 3x3 ConvBNAct (expansion 1), plus the input when `shortcut`.

  [B, H, W, C] -> [B, H, W, features]; the residual needs C == features.
  `attention` (e.g. `EMA`, built as `attention(dtype=..., name="attention")`,
  shape-preserving) optionally re-weights the branch before the residual add;
  plain YOLOv8 has none.
  """
  features: int
  shortcut: bool = True
  attention: Callable[..., nn.Module] | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = ConvBNAct(self.features, 3, dtype=self.dtype, name="cv1")(x, train)
    y = ConvBNAct(self.features, 3, dtype=self.dtype, name="cv2")(y, train)
    if self.attention is not None:
      y = self.attention(dtype=self.dtype, name="attention")(y)
    return x + y if self.shortcut and x.shape[-1] == self.features else y


class C2f(nn.Module):
  """CSP bottleneck with two convolutions and `num_blocks` inner blocks.

  [B, H, W, Cin] -> [B, H, W, features]. Hidden width c = features // 2:
  cv1 (1x1, -> 2c) is split into halves [a, b]; block i maps the last list
  element to a new one; cv2 (1x1) fuses concat[a, b, y1, ..., yn].

  `block_fn(features=c, shortcut=..., dtype=..., name=...)` builds an inner
  block with signature `block(x [B, H, W, c], train) -> [B, H, W, c]`
  (see `neuroseg_jax.models.fasternet.C2F_BLOCKS`).
  """
  features: int
  num_blocks: int = 1
  shortcut: bool = False
  block_fn: Callable[..., nn.Module] = Bottleneck
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = self.features // 2
    y = ConvBNAct(2 * hidden, dtype=self.dtype, name="cv1")(x, train)
    outputs = [y[..., :hidden], y[..., hidden:]]
    for i in range(self.num_blocks):
      block = self.block_fn(features=hidden, shortcut=self.shortcut, dtype=self.dtype,
                            name=f"m_{i}")
      outputs.append(block(outputs[-1], train))
    return ConvBNAct(self.features, dtype=self.dtype, name="cv2")(
        jnp.concatenate(outputs, axis=-1), train)


def max_pool_same(x: jax.Array, window: int) -> jax.Array:
  """Stride-1 max pool padded with -inf: [B, H, W, C] -> [B, H, W, C]."""
  pad = window // 2
  return nn.max_pool(x, (window, window), strides=(1, 1), padding=((pad, pad), (pad, pad)))


class SPPF(nn.Module):
  """Spatial pyramid pooling, fast: [B, H, W, Cin] -> [B, H, W, features].

  cv1 (1x1, -> Cin / 2), three chained `window` max pools, cv2 (1x1) over
  concat[x, pool1, pool2, pool3].
  """
  features: int
  window: int = 5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNAct(x.shape[-1] // 2, dtype=self.dtype, name="cv1")(x, train)
    pooled = [x]
    for _ in range(3):
      pooled.append(max_pool_same(pooled[-1], self.window))
    return ConvBNAct(self.features, dtype=self.dtype, name="cv2")(
        jnp.concatenate(pooled, axis=-1), train)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling: [B, H, W, C] -> [B, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


@dataclasses.dataclass(frozen=True)
class CompoundScale:
  """Ultralytics compound scaling: channels and block repeats of a model size."""
  depth: float
  width: float
  max_channels: int

  def channels(self, base: int) -> int:
    """Width-scaled channels, rounded up to a multiple of 8 (ultralytics make_divisible)."""
    return int(math.ceil(min(base, self.max_channels) * self.width / 8) * 8)

  def repeats(self, base: int) -> int:
    """Depth-scaled number of inner blocks (at least one)."""
    return max(round(base * self.depth), 1) if base > 1 else base


SCALES: Registry[CompoundScale] = Registry("model scale")
SCALES.register("n")(CompoundScale(0.33, 0.25, 1024))
SCALES.register("s")(CompoundScale(0.33, 0.50, 1024))
SCALES.register("m")(CompoundScale(0.67, 0.75, 768))
SCALES.register("l")(CompoundScale(1.00, 1.00, 512))
SCALES.register("x")(CompoundScale(1.00, 1.25, 512))
