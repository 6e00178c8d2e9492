"""2-D convolution whose kernel gradient is computed as matrix products, one per tap.

JAX differentiates a convolution's kernel by another convolution, in which the batch
plays the input features and the output map is the window: for x [B, H, W, Cin] and
the output's cotangent dy [B, Ho, Wo, Cout] it convolves [Cin, H, W, B] with
[Ho, Wo, B, Cout]. XLA:CPU hands that to YNNPACK as a convolution with B input
channels and an Ho x Wo window, which runs far below the CPU's matrix speed: on the
2-core AMD EPYC (AVX2) of RESULTS.md "The training step", the kernel gradient of one
1 x 1 convolution (96 -> 64 channels over 2 x 128 x 128 positions, 0.8 GFLOP) took
0.85 s, and kernel gradients took most of a NeuroSeg-III backward pass.

Here the kernel gradient is written as what it is, a sum over positions: for tap
(i, j) of a kernel with strides (sh, sw) on the padded input xp,
  dK[i, j] = sum over b, y, x of  xp[b, sh*y + i, sw*x + j, :]^T  dy[b, y, x, :]
one [Cin, N] x [N, Cout] matrix product per tap (N = B * Ho * Wo). The forward pass
and the input gradient stay XLA's own; the values are the same up to the order of
float summation. `conv_general_dilated` has `lax.conv_general_dilated`'s signature
(flax's `nn.Conv(conv_general_dilated=...)`) and takes this path for NHWC inputs
with HWIO kernels, explicit non-negative padding (or "SAME"/"VALID"), no dilation
and one feature group; anything else goes to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ("NHWC", "HWIO", "NHWC")


def _forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_LAYOUT)


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                    strides: tuple[int, int],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """Gradient of sum(conv(x, K) * dy) with respect to K [kh, kw, Cin, Cout], float32.

  x: [B, H, W, Cin]; dy: [B, Ho, Wo, Cout]; one matrix product per kernel tap.
  """
  kh, kw, cin, _ = kernel_shape
  batch, out_h, out_w, _ = dy.shape
  (sh, sw), ((top, bottom), (left, right)) = strides, padding
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  taps = [[jnp.einsum("byxc,byxo->co",
                      lax.slice(padded, (0, i, j, 0),
                                (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                                (1, sh, sw, 1)),
                      dy, preferred_element_type=jnp.float32)
           for j in range(kw)] for i in range(kh)]
  return jnp.stack([jnp.stack(row) for row in taps])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
  return _forward(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
  return _forward(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  (dx,) = jax.linear_transpose(lambda x_: _forward(x_, kernel, strides, padding), x)(dy)
  dk = kernel_gradient(x, dy, kernel.shape, strides, padding)
  return dx, dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc(dimension_numbers, x_shape, kernel_shape) -> bool:
  if dimension_numbers is None:
    return False
  return lax.conv_dimension_numbers(x_shape, kernel_shape, dimension_numbers) == \
      lax.conv_dimension_numbers(x_shape, kernel_shape, _LAYOUT)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with the kernel gradient as matrix products where it
  applies (see the module docstring)."""
  plain = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if (lhs.ndim != 4 or not _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
      or feature_group_count != 1 or batch_group_count != 1 or precision is not None
      or preferred_element_type is not None
      or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))):
    return plain()
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(p < 0 for pair in padding for p in pair):
    return plain()
  return _conv(lhs, rhs, strides, padding)
