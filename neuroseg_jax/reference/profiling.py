"""Parameter and FLOP counts of YOLOSeg-style models (per image, inference mode).

Two FLOP counts, both 2 FLOPs per multiply-add:
  * `matmul_flops`: 2 x MACs of every convolution and matrix product
    (conv_general_dilated, dot_general) in the traced forward, counting every
    kernel tap (zero padding included). With `with_decode=True` (default) the
    DFL decoding (a 16-bin expectation per box side) is included, as in the
    reference's eval forward. This equals PyTorch's
    `torch.utils.flop_counter` total (aten.convolution + aten.bmm) of the
    reference exactly: 32.406 GFLOPs for NeuroSeg-III at 640 x 640.
  * `xla_flops`: XLA's cost analysis of the compiled forward. XLA counts 2
    FLOPs per multiply-add of convolutions and dots but skips taps that fall on
    zero padding, and adds 1 FLOP per element of every elementwise op
    (BatchNorm, SiLU's multiply, residual adds, ...); transcendentals (exp,
    logistic) are reported separately and not included.
Ultralytics' "GFLOPs" (thop, 35.25 for NeuroSeg-III at 640) exceed the first
count by ~2.8 GFLOPs: thop counts ConvTranspose2d by its output size (4x the
proto upsample's MACs, +2.52 GFLOPs), 8 FLOPs per BatchNorm element, nearest
upsampling outputs and the DFL conv; for the models without EMA this accounts
for the difference exactly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp

from neuroseg_jax.models import yolo_decode


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (BatchNorm statistics are not parameters).

  Our DFL is a constant (yolo_decode), so for YOLOSeg this equals the reference's
  "params without the frozen DFL weight"; the reference's total adds those 16.
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def inference_fn(model: nn.Module, image_hw: tuple[int, int], in_channels: int = 3,
                 with_decode: bool = True):
  """(forward, abstract variables, abstract [1, H, W, C] images) of `model` in eval mode.

  forward(variables, images) returns the head outputs, decoded by
  `yolo_decode.decode_predictions` when `with_decode` (as the reference's eval forward).
  """
  def forward(variables, images):
    outputs = model.apply(variables, images, train=False)
    return yolo_decode.decode_predictions(outputs, image_hw) if with_decode else outputs

  images = jax.ShapeDtypeStruct((1, *image_hw, in_channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return forward, variables, images


def _jaxpr_matmul_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial) kernel axes
      taps = kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * taps
    elif eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      depth = math.prod(eqn.invars[0].aval.shape[d] for d in contract)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * depth
    for sub in jex.core.jaxprs_in_params(eqn.params):
      total += _jaxpr_matmul_flops(sub)
  return total


def matmul_flops(fn, *args) -> int:
  """2 x MACs of all convolutions and dot products of fn(*args), by tracing (no compile).

  args may be arrays or jax.ShapeDtypeStruct pytrees.
  """
  return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def compiled_flops(compiled: jax.stages.Compiled) -> float:
  """The "flops" entry of XLA's cost analysis of a compiled computation."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"])


def xla_flops(fn, *args) -> float:
  """XLA cost-analysis FLOPs of jit(fn) compiled for args (arrays or ShapeDtypeStructs)."""
  return compiled_flops(jax.jit(fn).lower(*args).compile())


def profile(model: nn.Module, image_size: int, in_channels: int = 3, with_xla: bool = True) -> dict:
  """{"params", "matmul_gflops", "xla_gflops"} per square image (decoding included).

  `with_xla=False` skips the compile (xla_gflops is then None).
  """
  forward, variables, images = inference_fn(model, (image_size, image_size), in_channels)
  return {
      "params": count_params(variables["params"]),
      "matmul_gflops": matmul_flops(forward, variables, images) / 1e9,
      "xla_gflops": xla_flops(forward, variables, images) / 1e9 if with_xla else None,
  }
