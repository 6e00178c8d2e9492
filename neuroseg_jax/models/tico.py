"""TiCo encoder: the NeuroSeg-III backbone + global pooling + projection head (NHWC).

`TiCoEncoder` = `YOLOBackbone` (stem .. SPPF, submodule `backbone`) -> global
average pooling of the SPPF output [B, C] -> `ProjectionHead`
Linear(C -> hidden) -> BatchNorm -> ReLU -> Linear(hidden -> out).

The backbone is the very module YOLOSeg holds as `backbone`, built from the same
`scale` / `block` fields, so `params["backbone"]` and `batch_stats["backbone"]`
of a TiCo checkpoint load 1:1 into a segmentation network.

Head widths scale with the model width: C = the SPPF width (512 at scale "s",
256 at "n"), hidden = 8 * C (4096 at "s", as in NeuroSeg-III) and out = C / 2
(256 at "s"), unless `head_hidden` / `head_out` are set (> 0).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.models.yolo_blocks import SCALES
from neuroseg_jax.models.yolo_seg import YOLOBackbone, build_yolo_seg

Dtype = Any
HIDDEN_PER_CHANNEL = 8   # 512 -> 4096 at scale s
OUT_PER_CHANNEL = 0.5    # 512 -> 256 at scale s


def sppf_width(scale: str) -> int:
  """Channels of the backbone's SPPF output (p5) at a model scale."""
  return SCALES.get(scale).channels(1024)


def head_dims(scale: str, head_hidden: int = 0, head_out: int = 0) -> tuple[int, int]:
  """(hidden, out) widths of the projection head; 0 means scaled with the model width."""
  width = sppf_width(scale)
  return (head_hidden or HIDDEN_PER_CHANNEL * width,
          head_out or int(OUT_PER_CHANNEL * width))


class ProjectionHead(nn.Module):
  """[B, C] -> [B, out]: Linear(C -> hidden) -> BatchNorm -> ReLU -> Linear(hidden -> out).

  The first Linear has no bias (BatchNorm's shift replaces it). BatchNorm uses
  PyTorch BatchNorm1d's defaults (momentum 0.1, i.e. 0.9 in Flax terms, eps 1e-5).
  """
  hidden: int
  out: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                 name="linear_0")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
    return nn.Dense(self.out, dtype=self.dtype, param_dtype=jnp.float32,
                    name="linear_1")(nn.relu(x))


class TiCoEncoder(nn.Module):
  """Backbone + global average pooling + projection head: [B, H, W, C] -> [B, out].

  H, W multiples of 32. The output is the raw projection (the TiCo loss
  L2-normalises it); `features(x)` gives the pooled backbone features [B, C_sppf].
  Drop-path (rng stream "drop_path") and BatchNorm batch statistics (mutable
  "batch_stats") only when `train`.
  """
  scale: str = "s"
  block: str = "c2f_faster_ema"
  drop_path_rate: float = 0.1
  head_hidden: int = 0
  head_out: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    self.backbone = YOLOBackbone(self.scale, self.block, self.drop_path_rate, self.dtype)
    hidden, out = head_dims(self.scale, self.head_hidden, self.head_out)
    self.head = ProjectionHead(hidden, out, dtype=self.dtype)

  def features(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, C] -> [B, C_sppf]: the SPPF output averaged over space."""
    return jnp.mean(self.backbone(x, train)["p5"], axis=(1, 2))

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.head(self.features(x, train), train)


def build_tico_encoder(model_config: Any, drop_path_rate: float | None = None) -> TiCoEncoder:
  """TiCoEncoder whose backbone equals that of `build_yolo_seg(model_config)`.

  `model_config` (a ConfigDict or dict) holds the YOLOSeg fields (or a `preset`)
  plus optional `head_hidden` / `head_out`; `drop_path_rate` overrides the
  config's (the momentum branch uses 0).
  """
  if hasattr(model_config, "to_dict"):
    model_config = model_config.to_dict()
  seg = build_yolo_seg(model_config)
  if drop_path_rate is None:
    drop_path_rate = seg.drop_path_rate
  return TiCoEncoder(scale=seg.scale, block=seg.block, drop_path_rate=drop_path_rate,
                     head_hidden=model_config.get("head_hidden", 0),
                     head_out=model_config.get("head_out", 0), dtype=seg.dtype)
