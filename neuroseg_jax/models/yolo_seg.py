"""YOLOv8-seg family with the NeuroSeg-III ablation switches (NHWC).

YOLOSeg = YOLOBackbone (stem .. SPPF, reference layers 0-9) -> neck (PAN or
BiFPN) -> SegmentHead. Switches: `scale` (n/s/m/l/x compound scaling),
`block` (C2f inner block, see fasternet.C2F_BLOCKS), `neck` (necks.NECKS),
`num_classes`. Presets: "neuroseg3" (s, c2f_faster_ema, bifpn, 1 class) and
"yolov8s_seg" (s, c2f, pan, 1 class).

TiCo pre-training uses `YOLOBackbone` alone; `model.backbone` holds the same
module inside YOLOSeg, so `params["backbone"]` / `batch_stats["backbone"]`
transfer directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.fasternet import C2F_BLOCKS
from neuroseg_jax.models.necks import NECKS
from neuroseg_jax.models.segment_head import SegmentHead
from neuroseg_jax.models.yolo_blocks import SCALES, SPPF, C2f, ConvBNAct
from neuroseg_jax.registry import Registry

Dtype = Any
MAX_STRIDE = 32


def check_image_batch(x: jax.Array, name: str) -> None:
  """Raises DataError unless x is [B, H, W, C] with H and W multiples of 32."""
  if x.ndim != 4:
    raise DataError(name, f"expected an image batch [B, H, W, C], got shape {tuple(x.shape)}")
  if x.shape[1] % MAX_STRIDE or x.shape[2] % MAX_STRIDE:
    raise DataError(name, f"height and width must be multiples of {MAX_STRIDE}, "
                    f"got {x.shape[1]}x{x.shape[2]}")


class YOLOBackbone(nn.Module):
  """YOLOv8 backbone with a pluggable C2f block: [B, H, W, C] -> features.

  Returns {"p2": [B, H/4, W/4, c(128)], "p3": [B, H/8, W/8, c(256)],
  "p4": [B, H/16, W/16, c(512)], "p5": [B, H/32, W/32, c(1024)]}, c = the
  scale's channel rule (64, 128, 256, 512 at scale s); p5 is the SPPF output.
  """
  scale: str = "s"
  block: str = "c2f_faster_ema"
  drop_path_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    check_image_batch(x, "YOLOBackbone input")
    scale = SCALES.get(self.scale)
    block_fn = C2F_BLOCKS.get(self.block)(self.drop_path_rate)
    x = ConvBNAct(scale.channels(64), 3, 2, dtype=self.dtype, name="stem")(x, train)
    features = {}
    for level, base, repeats in (("p2", 128, 3), ("p3", 256, 6), ("p4", 512, 6), ("p5", 1024, 3)):
      width = scale.channels(base)
      x = ConvBNAct(width, 3, 2, dtype=self.dtype, name=f"down_{level}")(x, train)
      x = C2f(width, scale.repeats(repeats), shortcut=True, block_fn=block_fn, dtype=self.dtype,
              name=f"stage_{level}")(x, train)
      features[level] = x
    features["p5"] = SPPF(width, dtype=self.dtype, name="sppf")(x, train)  # replaces stage_p5's
    return features


class YOLOSeg(nn.Module):
  """YOLOv8-style instance segmentation network: [B, H, W, C] -> head outputs.

  H, W multiples of 32. Returns the `yolo_decode` contract: {"box_logits":
  [B, A, 64], "cls_logits": [B, A, num_classes], "mask_coef": [B, A, 32],
  "protos": [B, H/4, W/4, 32]}. Drop-path (rng stream "drop_path") and
  BatchNorm batch statistics (mutable "batch_stats") only when `train`.
  """
  scale: str = "s"
  block: str = "c2f_faster_ema"
  neck: str = "bifpn"
  num_classes: int = 1
  drop_path_rate: float = 0.1
  dtype: Dtype = jnp.float32

  def setup(self):
    scale = SCALES.get(self.scale)
    self.backbone = YOLOBackbone(self.scale, self.block, self.drop_path_rate, self.dtype)
    self.pyramid = NECKS.get(self.neck)(self.scale, self.dtype)
    self.head = SegmentHead(self.num_classes, proto_channels=scale.channels(256), dtype=self.dtype)

  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    return self.head(self.pyramid(self.backbone(x, train), train), train)


PRESETS: Registry[dict] = Registry("YOLOSeg preset")
PRESETS.register("neuroseg3")(dict(scale="s", block="c2f_faster_ema", neck="bifpn", num_classes=1))
PRESETS.register("yolov8s_seg")(dict(scale="s", block="c2f", neck="pan", num_classes=1))

_FIELDS = ("scale", "block", "neck", "num_classes", "drop_path_rate", "dtype")


def build_yolo_seg(model_config: Any) -> YOLOSeg:
  """YOLOSeg from a ConfigDict / dict / object with the YOLOSeg fields.

  An optional `preset` ("neuroseg3", "yolov8s_seg") supplies defaults that the
  other fields override; `dtype` may be a name ("bfloat16"). Unknown scale,
  block or neck names raise with the list of valid choices.
  """
  if hasattr(model_config, "to_dict"):
    model_config = model_config.to_dict()
  if not isinstance(model_config, Mapping):
    model_config = {k: getattr(model_config, k) for k in ("preset",) + _FIELDS
                    if hasattr(model_config, k)}
  fields = dict(PRESETS.get(model_config["preset"])) if model_config.get("preset") else {}
  fields.update({k: model_config[k] for k in _FIELDS if k in model_config})
  if isinstance(fields.get("dtype"), str):
    fields["dtype"] = jnp.dtype(fields["dtype"])
  for registry, key in ((SCALES, "scale"), (C2F_BLOCKS, "block"), (NECKS, "neck")):
    if key in fields:
      registry.get(fields[key])
  return YOLOSeg(**fields)
