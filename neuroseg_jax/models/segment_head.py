"""YOLOv8 segmentation head (NHWC): per-level box / class / mask-coefficient branches + Proto.

Submodule names follow the reference (`cv2_<level>_<j>` box branch,
`cv3_<level>_<j>` class branch, `cv4_<level>_<j>` mask-coefficient branch,
`proto`), so PyTorch checkpoints convert name by name.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.models.conv_blocks import unfold_product
from neuroseg_jax.models.yolo_blocks import TORCH_CONV_INIT, ConvBNAct, conv2d, torch_bias_init
from neuroseg_jax.models.box_geometry import REG_MAX, STRIDES

Dtype = Any


class TransposedConv2x2(nn.Module):
  """ConvTranspose2d with kernel 2, stride 2, padding 0, with bias.

  [B, H, W, Cin] -> [B, 2H, 2W, features]; the kernels do not overlap, so
  out[b, 2i + di, 2j + dj, o] = bias[o] + sum_c x[b, i, j, c] kernel[di, dj, c, o].
  `kernel` is [2, 2, Cin, features] (PyTorch's [Cin, features, 2, 2] transposed);
  computed by `conv_blocks.unfold_product`.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", TORCH_CONV_INIT, (2, 2, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", torch_bias_init(4 * self.features), (self.features,), jnp.float32)
    return unfold_product(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Proto(nn.Module):
  """Mask prototypes: [B, H, W, Cin] -> [B, 2H, 2W, num_masks].

  cv1 (3x3, -> hidden), `upsample` (TransposedConv2x2), cv2 (3x3), cv3 (1x1, -> num_masks).
  """
  hidden: int = 256
  num_masks: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNAct(self.hidden, 3, dtype=self.dtype, name="cv1")(x, train)
    x = TransposedConv2x2(self.hidden, dtype=self.dtype, name="upsample")(x)
    x = ConvBNAct(self.hidden, 3, dtype=self.dtype, name="cv2")(x, train)
    return ConvBNAct(self.num_masks, dtype=self.dtype, name="cv3")(x, train)


def class_bias_prior(num_classes: int, stride: int, image_size: int = 640) -> float:
  """Ultralytics class-logit bias: log(5 objects / nc / cells at `image_size`)."""
  return math.log(5 / num_classes / (image_size / stride) ** 2)


class SegmentHead(nn.Module):
  """YOLOv8 `Segment` head: (P3, P4, P5) -> head-output dict (yolo_decode contract).

  Inputs [B, H / s, W / s, C_s] for strides s = 8, 16, 32. Per level: two 3x3
  ConvBNAct and a 1x1 biased conv in each of three branches, widths from the
  P3 channels C_3 as in ultralytics: box max(16, C_3 / 4, 4 reg_max) -> 4 reg_max
  logits (final bias 1.0); class max(C_3, min(nc, 100)) -> nc logits (bias
  `class_bias_prior`); mask max(C_3 / 4, nm) -> nm coefficients. `proto` runs on P3.

  Returns {"box_logits": [B, A, 4 reg_max], "cls_logits": [B, A, nc],
  "mask_coef": [B, A, nm], "protos": [B, H / 4, W / 4, nm]}, anchors A ordered
  P3, P4, P5, each row-major.
  """
  num_classes: int = 1
  num_masks: int = 32
  proto_channels: int = 128
  reg_max: int = REG_MAX
  strides: Sequence[int] = STRIDES
  dtype: Dtype = jnp.float32

  def _branch(self, x: jax.Array, name: str, hidden: int, out: int, bias_init, train: bool):
    """ConvBNAct 3x3 -> ConvBNAct 3x3 -> biased 1x1 conv: [B, h, w, C] -> [B, h * w, out]."""
    x = ConvBNAct(hidden, 3, dtype=self.dtype, name=f"{name}_0")(x, train)
    x = ConvBNAct(hidden, 3, dtype=self.dtype, name=f"{name}_1")(x, train)
    x = conv2d(out, 1, use_bias=True, bias_init=bias_init, dtype=self.dtype, name=f"{name}_2")(x)
    return x.reshape(x.shape[0], -1, out)

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array], train: bool) -> dict[str, jax.Array]:
    c3 = levels[0].shape[-1]
    box_width = max(16, c3 // 4, 4 * self.reg_max)
    cls_width = max(c3, min(self.num_classes, 100))
    mask_width = max(c3 // 4, self.num_masks)
    box, cls, coef = [], [], []
    for i, (x, stride) in enumerate(zip(levels, self.strides)):
      box.append(self._branch(x, f"cv2_{i}", box_width, 4 * self.reg_max,
                              nn.initializers.constant(1.0), train))
      cls.append(self._branch(x, f"cv3_{i}", cls_width, self.num_classes,
                              nn.initializers.constant(class_bias_prior(self.num_classes, stride)),
                              train))
      coef.append(self._branch(x, f"cv4_{i}", mask_width, self.num_masks,
                               torch_bias_init(mask_width), train))
    protos = Proto(self.proto_channels, self.num_masks, dtype=self.dtype, name="proto")(
        levels[0], train)
    return {"box_logits": jnp.concatenate(box, axis=1), "cls_logits": jnp.concatenate(cls, axis=1),
            "mask_coef": jnp.concatenate(coef, axis=1), "protos": protos}
