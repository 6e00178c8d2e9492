"""Feature-pyramid necks (NHWC): the YOLOv8 PAN and the NeuroSeg-III BiFPN.

A neck maps the backbone features {"p2": stride 4, "p3": stride 8, "p4":
stride 16, "p5": stride 32 (after SPPF)}, each [B, H / s, W / s, C_s], to the
head inputs (P3, P4, P5). Submodule names map to the reference's layers in
`reference/torch_convert.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.models.yolo_blocks import SCALES, C2f, ConvBNAct, upsample_nearest2x
from neuroseg_jax.registry import Registry

Dtype = Any
Features = dict[str, jax.Array]


class Fusion(nn.Module):
  """BiFPN fast normalised fusion: n x [B, H, W, C] -> [B, H, W, C].

  w = relu(fusion_weight); out = sum_i w_i * x_i / sum_i w_i. Like the
  reference, no epsilon in the denominator. Weights start at 1 (plain mean).
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
    weights = self.param("fusion_weight", nn.initializers.ones, (len(inputs),), jnp.float32)
    weights = nn.relu(weights)
    weights = (weights / weights.sum()).astype(self.dtype)
    return sum(w * x for w, x in zip(weights, inputs))


class BiFPNNeck(nn.Module):
  """NeuroSeg-III BiFPN (reference layers 10-27): features -> (P3, P4, P5).

  Every output has `scale.channels(256)` channels (128 at scale s).
  1x1 laterals from p3/p4/p5; top-down: P4 = C2f(fuse(up(P5'), P4')),
  P3 = C2f(fuse(up(P4_td), P3')); bottom-up: P3 = C2f(fuse(down(p2), P3',
  P3_td)), P4 = C2f(fuse(down(P3), P4', P4_td)), P5 = C2f(fuse(down(P4), P5')),
  where down is a stride-2 3x3 ConvBNAct and C2f has no shortcut.
  """
  scale: str = "s"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Features, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    scale = SCALES.get(self.scale)
    width, repeats = scale.channels(256), scale.repeats(3)
    conv = lambda name, k=1, s=1: ConvBNAct(width, k, s, dtype=self.dtype, name=name)
    node = lambda name: C2f(width, repeats, shortcut=False, dtype=self.dtype, name=name)
    fuse = lambda name: Fusion(dtype=self.dtype, name=name)

    lat3 = conv("lateral_p3")(features["p3"], train)
    lat4 = conv("lateral_p4")(features["p4"], train)
    lat5 = conv("lateral_p5")(features["p5"], train)
    td4 = node("node_td_p4")(fuse("fuse_td_p4")([upsample_nearest2x(lat5), lat4]), train)
    td3 = node("node_td_p3")(fuse("fuse_td_p3")([upsample_nearest2x(td4), lat3]), train)
    p2_down = conv("down_p2", 3, 2)(features["p2"], train)
    out3 = node("node_bu_p3")(fuse("fuse_bu_p3")([p2_down, lat3, td3]), train)
    out3_down = conv("down_bu_p3", 3, 2)(out3, train)
    out4 = node("node_bu_p4")(fuse("fuse_bu_p4")([out3_down, lat4, td4]), train)
    out4_down = conv("down_bu_p4", 3, 2)(out4, train)
    out5 = node("node_bu_p5")(fuse("fuse_bu_p5")([out4_down, lat5]), train)
    return out3, out4, out5


class PANNeck(nn.Module):
  """YOLOv8 PAN (reference layers 10-21 of yolov8-seg): features -> (P3, P4, P5).

  Channels (base 256, 512, 1024 before width scaling): top-down
  P4_td = C2f(cat[up(p5), p4]), P3 = C2f(cat[up(P4_td), p3]); bottom-up
  P4 = C2f(cat[down(P3), P4_td]), P5 = C2f(cat[down(P4), p5]); concatenation
  in that order, C2f without shortcut, down = stride-2 3x3 ConvBNAct.
  """
  scale: str = "s"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Features, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    scale = SCALES.get(self.scale)
    repeats = scale.repeats(3)
    node = lambda base, name: C2f(scale.channels(base), repeats, shortcut=False, dtype=self.dtype,
                                  name=name)
    down = lambda base, name: ConvBNAct(scale.channels(base), 3, 2, dtype=self.dtype, name=name)
    cat = lambda *xs: jnp.concatenate(xs, axis=-1)

    td4 = node(512, "node_td_p4")(cat(upsample_nearest2x(features["p5"]), features["p4"]), train)
    out3 = node(256, "node_td_p3")(cat(upsample_nearest2x(td4), features["p3"]), train)
    out4 = node(512, "node_bu_p4")(cat(down(256, "down_bu_p3")(out3, train), td4), train)
    out5 = node(1024, "node_bu_p5")(cat(down(512, "down_bu_p4")(out4, train), features["p5"]),
                                     train)
    return out3, out4, out5


NECKS: Registry[type[nn.Module]] = Registry("neck")
NECKS.register("pan")(PANNeck)
NECKS.register("bifpn")(BiFPNNeck)
