"""NeuroSeg-III in PyTorch (NCHW), with the reference's layer indices and module names.

`NeuroSeg3Torch().model[i]` is reference layer i (0-9 backbone, 10-27 BiFPN neck,
28 the Segment head), so the authors' state dicts
(../shared/reference/neuroseg3/neuroseg3_state.npz) load strictly. Scale s, one
class. The Flax modules in `neuroseg_jax/models/` document each block; this file
restates them in PyTorch terms only, for the timing replica (see the package doc).

Training mode returns what ultralytics' Segment head returns in training:
(per-level raw outputs [B, 4 * 16 + 1, H / s, W / s] for s = 8, 16, 32,
mask coefficients [B, 32, A], prototypes [B, 32, H / 4, W / 4]). Eval mode returns
the decoded predictions [B, 4 + 1 + 32, A] (xywh in input pixels, class
probability, coefficients) and the prototypes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

REG_MAX = 16
STRIDES = (8, 16, 32)
BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # ultralytics' BatchNorm settings


class ConvBNAct(nn.Module):
  """Bias-free k x k conv (padding k // 2) -> BatchNorm -> SiLU ("Conv" in ultralytics)."""

  def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

  def forward(self, x):
    return F.silu(self.bn(self.conv(x)))


class EMAAttention(nn.Module):
  """Efficient multi-scale attention over `groups` channel groups sharing parameters:
  [B, C, H, W] -> [B, C, H, W] (the steps are listed in models/ema_attention.py)."""

  def __init__(self, channels: int, groups: int = 8):
    super().__init__()
    self.groups = groups
    cg = channels // groups
    self.gn = nn.GroupNorm(cg, cg)
    self.conv1x1 = nn.Conv2d(cg, cg, 1)
    self.conv3x3 = nn.Conv2d(cg, cg, 3, padding=1)

  def forward(self, x):
    b, c, h, w = x.shape
    g = x.reshape(b * self.groups, c // self.groups, h, w)
    strip = self.conv1x1(torch.cat([g.mean(3, keepdim=True),
                                    g.mean(2, keepdim=True).transpose(2, 3)], dim=2))
    gate_h, gate_w = strip[:, :, :h], strip[:, :, h:].transpose(2, 3)
    x1 = self.gn(g * gate_h.sigmoid() * gate_w.sigmoid())
    x2 = self.conv3x3(g)
    a1 = x1.mean((2, 3)).softmax(-1)  # [BG, cg]
    a2 = x2.mean((2, 3)).softmax(-1)
    weights = torch.einsum("bc,bchw->bhw", a1, x2) + torch.einsum("bc,bchw->bhw", a2, x1)
    return (g * weights.sigmoid()[:, None]).reshape(b, c, h, w)


class PartialConv(nn.Module):
  """3x3 bias-free conv over the first C / 4 channels, the rest unchanged."""

  def __init__(self, channels: int, n_div: int = 4):
    super().__init__()
    self.mixed = channels // n_div
    self.partial_conv3 = nn.Conv2d(self.mixed, self.mixed, 3, 1, 1, bias=False)

  def forward(self, x):
    return torch.cat([self.partial_conv3(x[:, :self.mixed]), x[:, self.mixed:]], dim=1)


class FasterEMABlock(nn.Module):
  """x + EMA(DropPath(mlp(PConv(x)))), mlp = ConvBNAct 1x1 (C -> 2C), conv 1x1 (2C -> C)."""

  def __init__(self, channels: int, drop_path_rate: float = 0.1):
    super().__init__()
    self.spatial_mixing = PartialConv(channels)
    self.mlp = nn.Sequential(ConvBNAct(channels, 2 * channels),
                             nn.Conv2d(2 * channels, channels, 1, bias=False))
    self.attention = EMAAttention(channels)
    self.drop_path_rate = drop_path_rate

  def forward(self, x):
    y = self.mlp(self.spatial_mixing(x))
    if self.training and self.drop_path_rate > 0:
      keep = 1.0 - self.drop_path_rate
      y = y * torch.bernoulli(torch.full((y.shape[0], 1, 1, 1), keep, dtype=y.dtype)) / keep
    return x + self.attention(y)


class Bottleneck(nn.Module):
  """Two 3x3 ConvBNAct, no residual (the neck's C2f has shortcut=False)."""

  def __init__(self, channels: int):
    super().__init__()
    self.cv1 = ConvBNAct(channels, channels, 3)
    self.cv2 = ConvBNAct(channels, channels, 3)

  def forward(self, x):
    return self.cv2(self.cv1(x))


class C2f(nn.Module):
  """cv1 1x1 -> split in halves, n inner blocks on the last piece, cv2 1x1 over all pieces."""

  def __init__(self, cin: int, cout: int, blocks: list[nn.Module]):
    super().__init__()
    self.hidden = cout // 2
    self.cv1 = ConvBNAct(cin, 2 * self.hidden)
    self.cv2 = ConvBNAct((2 + len(blocks)) * self.hidden, cout)
    self.m = nn.ModuleList(blocks)

  def forward(self, x):
    pieces = list(self.cv1(x).split(self.hidden, dim=1))
    for block in self.m:
      pieces.append(block(pieces[-1]))
    return self.cv2(torch.cat(pieces, dim=1))


class SPPF(nn.Module):
  """cv1 1x1 (C -> C / 2), three chained 5 x 5 max pools, cv2 1x1 over the four maps."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.cv1 = ConvBNAct(cin, cin // 2)
    self.cv2 = ConvBNAct(4 * (cin // 2), cout)

  def forward(self, x):
    maps = [self.cv1(x)]
    for _ in range(3):
      maps.append(F.max_pool2d(maps[-1], 5, 1, 2))
    return self.cv2(torch.cat(maps, dim=1))


class Fusion(nn.Module):
  """BiFPN fast normalised fusion: sum_i relu(w_i) x_i / sum_i relu(w_i)."""

  def __init__(self, inputs: int):
    super().__init__()
    self.fusion_weight = nn.Parameter(torch.ones(inputs))

  def forward(self, xs):
    w = F.relu(self.fusion_weight)
    w = w / w.sum()
    return sum(wi * x for wi, x in zip(w, xs))


class Proto(nn.Module):
  """3x3 ConvBNAct, 2x2 stride-2 transposed conv, 3x3 ConvBNAct, 1x1 ConvBNAct -> 32 maps."""

  def __init__(self, cin: int, hidden: int = 128, masks: int = 32):
    super().__init__()
    self.cv1 = ConvBNAct(cin, hidden, 3)
    self.upsample = nn.ConvTranspose2d(hidden, hidden, 2, 2, 0, bias=True)
    self.cv2 = ConvBNAct(hidden, hidden, 3)
    self.cv3 = ConvBNAct(hidden, masks)

  def forward(self, x):
    return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class DFL(nn.Module):
  """Expected distance under the softmax over 16 bins (a frozen 1x1 conv with weights 0..15)."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
    self.conv.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)

  def forward(self, x):  # [B, 4 * 16, A] -> [B, 4, A]
    b, _, a = x.shape
    return self.conv(x.view(b, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, offset: float = 0.5):
  """Cell centres of every level, row-major, in cells ([A, 2] xy) and their strides [A, 1]."""
  points, strides = [], []
  for x, stride in zip(feats, STRIDES):
    h, w = x.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h) + offset, torch.arange(w) + offset, indexing="ij")
    points.append(torch.stack([xs, ys], -1).view(-1, 2).float())
    strides.append(torch.full((h * w, 1), float(stride)))
  return torch.cat(points), torch.cat(strides)


class Segment(nn.Module):
  """Per level three branches (box cv2, class cv3, coefficients cv4) and Proto on P3."""

  def __init__(self, channels: int = 128, classes: int = 1, masks: int = 32):
    super().__init__()
    box, cls, coef = max(16, channels // 4, 4 * REG_MAX), max(channels, classes), max(
        channels // 4, masks)

    def branch(width, out):
      return nn.Sequential(ConvBNAct(channels, width, 3), ConvBNAct(width, width, 3),
                           nn.Conv2d(width, out, 1))

    self.cv2 = nn.ModuleList(branch(box, 4 * REG_MAX) for _ in STRIDES)
    self.cv3 = nn.ModuleList(branch(cls, classes) for _ in STRIDES)
    self.dfl = DFL()
    self.proto = Proto(channels, channels, masks)
    self.cv4 = nn.ModuleList(branch(coef, masks) for _ in STRIDES)
    for box_branch, cls_branch, stride in zip(self.cv2, self.cv3, STRIDES):
      box_branch[-1].bias.data[:] = 1.0  # ultralytics' Detect bias initialisation
      cls_branch[-1].bias.data[:] = math.log(5 / classes / (640 / stride) ** 2)

  def forward(self, xs):
    protos = self.proto(xs[0])
    b = xs[0].shape[0]
    coefs = torch.cat([cv4(x).view(b, -1, x.shape[2] * x.shape[3])
                       for cv4, x in zip(self.cv4, xs)], dim=2)
    raw = [torch.cat([cv2(x), cv3(x)], dim=1) for cv2, cv3, x in zip(self.cv2, self.cv3, xs)]
    if self.training:
      return raw, coefs, protos
    points, strides = make_anchors(raw)
    flat = torch.cat([r.view(b, r.shape[1], -1) for r in raw], dim=2)
    distances = self.dfl(flat[:, :4 * REG_MAX])
    lt, rb = distances.chunk(2, 1)
    x1y1, x2y2 = points.T[None] - lt, points.T[None] + rb
    xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], dim=1) * strides.T[None]
    return torch.cat([xywh, flat[:, 4 * REG_MAX:].sigmoid(), coefs], dim=1), protos


# (layer, inputs) of the neck: -1 is the previous layer. Upsampling layers 13 and 16
# have no parameters.
_NECK_INPUTS = {10: [4], 11: [6], 12: [9], 13: [12], 14: [13, 11], 15: [-1], 16: [15],
                17: [16, 10], 18: [-1], 19: [2], 20: [19, 10, 18], 21: [-1], 22: [21],
                23: [22, 11, 15], 24: [-1], 25: [24], 26: [25, 12], 27: [-1]}


class NeuroSeg3Torch(nn.Module):
  """The NeuroSeg-III network (scale s, 1 class): [B, 3, H, W] -> Segment outputs."""

  def __init__(self, in_channels: int = 3, drop_path_rate: float = 0.1):
    super().__init__()

    def faster_c2f(c, n):
      return C2f(c, c, [FasterEMABlock(c // 2, drop_path_rate) for _ in range(n)])

    def neck_c2f(c):
      return C2f(c, c, [Bottleneck(c // 2)])

    layers = [ConvBNAct(in_channels, 32, 3, 2), ConvBNAct(32, 64, 3, 2), faster_c2f(64, 1),
              ConvBNAct(64, 128, 3, 2), faster_c2f(128, 2), ConvBNAct(128, 256, 3, 2),
              faster_c2f(256, 2), ConvBNAct(256, 512, 3, 2), faster_c2f(512, 1),
              SPPF(512, 512),
              ConvBNAct(128, 128), ConvBNAct(256, 128), ConvBNAct(512, 128),
              nn.Upsample(scale_factor=2), Fusion(2), neck_c2f(128),
              nn.Upsample(scale_factor=2), Fusion(2), neck_c2f(128),
              ConvBNAct(64, 128, 3, 2), Fusion(3), neck_c2f(128),
              ConvBNAct(128, 128, 3, 2), Fusion(3), neck_c2f(128),
              ConvBNAct(128, 128, 3, 2), Fusion(2), neck_c2f(128),
              Segment(128)]
    self.model = nn.ModuleList(layers)

  def forward(self, x):
    outputs = []
    for layer in self.model[:10]:
      x = layer(x)
      outputs.append(x)
    for i in range(10, 28):
      sources = [outputs[j] if j >= 0 else outputs[-1] for j in _NECK_INPUTS[i]]
      layer = self.model[i]
      outputs.append(layer(sources) if isinstance(layer, Fusion) else layer(sources[0]))
    return self.model[28]([outputs[21], outputs[24], outputs[27]])
