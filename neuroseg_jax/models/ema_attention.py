"""EMA: efficient multi-scale attention (Ouyang et al. 2023), as used by NeuroSeg-III."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.yolo_blocks import conv2d, torch_bias_init

Dtype = Any


class EMA(nn.Module):
  """Efficient multi-scale attention: [B, H, W, C] -> [B, H, W, C].

  The channels are split into `groups` consecutive groups of cg = C / groups
  channels that share all parameters. For each group X [H, W, cg]:
    1. xh = mean of X over W, xw = mean over H; a shared 1x1 conv (`conv1x1`)
       runs over their concatenation [H + W, cg]; sigmoids of the two parts
       gate X along H and along W; `gn` (GroupNorm with one channel per group,
       eps 1e-5) normalises the gated map -> x1.
    2. a 3x3 conv (`conv3x3`) of X -> x2.
    3. a1 = softmax over channels of the spatial mean of x1, a2 likewise of x2;
       the spatial weight map is sum_c a1[c] x2[..., c] + sum_c a2[c] x1[..., c].
    4. output = X * sigmoid(weight map), the same map for all cg channels.
  """
  groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    if channels % self.groups:
      raise DataError("EMA input", f"{channels} channels do not split into {self.groups} groups")
    cg = channels // self.groups
    # [B, H, W, G * cg] -> [B * G, H, W, cg]; group g of sample b sits at row b * G + g.
    groups = x.reshape(batch, height, width, self.groups, cg).transpose(0, 3, 1, 2, 4)
    groups = groups.reshape(batch * self.groups, height, width, cg)

    pooled_h = groups.mean(axis=2)  # [BG, H, cg]
    pooled_w = groups.mean(axis=1)  # [BG, W, cg]
    strip = jnp.concatenate([pooled_h, pooled_w], axis=1)[:, :, None, :]  # [BG, H + W, 1, cg]
    strip = conv2d(cg, 1, use_bias=True, dtype=self.dtype, bias_init=torch_bias_init(cg),
                   name="conv1x1")(strip)[:, :, 0, :]
    gate_h = jax.nn.sigmoid(strip[:, :height])[:, :, None, :]  # [BG, H, 1, cg]
    gate_w = jax.nn.sigmoid(strip[:, height:])[:, None, :, :]  # [BG, 1, W, cg]
    x1 = nn.GroupNorm(num_groups=cg, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                      param_dtype=jnp.float32, name="gn")(groups * gate_h * gate_w)
    x2 = conv2d(cg, 3, use_bias=True, dtype=self.dtype, bias_init=torch_bias_init(9 * cg),
                name="conv3x3")(groups)

    a1 = jax.nn.softmax(x1.mean(axis=(1, 2)), axis=-1)  # [BG, cg]
    a2 = jax.nn.softmax(x2.mean(axis=(1, 2)), axis=-1)
    weights = jnp.einsum("bc,bhwc->bhw", a1, x2) + jnp.einsum("bc,bhwc->bhw", a2, x1)
    out = groups * jax.nn.sigmoid(weights)[..., None]
    out = out.reshape(batch, self.groups, height, width, cg).transpose(0, 2, 3, 1, 4)
    return out.reshape(batch, height, width, channels)
