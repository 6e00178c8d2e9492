"""Convolution whose kernel gradient is computed as matrix products, one per tap.

JAX differentiates a convolution's kernel by another convolution, in which the batch
plays the input features and the output map is the window: for x [B, H, W, Cin] and
the output's cotangent dy [B, Ho, Wo, Cout] it convolves [Cin, H, W, B] with
[Ho, Wo, B, Cout]. XLA:CPU hands that to YNNPACK as a convolution with B input
channels and an Ho x Wo window, which runs far below the CPU's matrix speed: on the
2-core AMD EPYC (AVX2) of RESULTS.md "The training step", the kernel gradient of one
1 x 1 convolution (96 -> 64 channels over 2 x 128 x 128 positions, 0.8 GFLOP) took
0.85 s, and kernel gradients took most of a NeuroSeg-III backward pass.

Here the kernel gradient is written as what it is, a sum over positions: for tap
(i, j) of a 2-D kernel with strides (sh, sw) on the padded input xp,
  dK[i, j] = sum over b, y, x of  xp[b, sh*y + i, sw*x + j, :]^T  dy[b, y, x, :]
one [Cin, N] x [N, Cout] matrix product per tap (likewise for 1-D and 3-D). Split into
its stride phases and flattened, xp gives every tap's operand as a contiguous block of
rows, so the taps loop over one block copy at a time (`kernel_gradient`). The forward
pass and the input gradient stay XLA's own; the values are the same up to the order of
float summation. `conv_general_dilated` has `lax.conv_general_dilated`'s signature
(flax's `nn.Conv(conv_general_dilated=...)`) and takes this path for channels-last
inputs [B, *spatial, Cin] with [*window, Cin, Cout] kernels, explicit non-negative
padding (or "SAME"/"VALID"), no dilation and one feature group; anything else goes to
`lax.conv_general_dilated` unchanged.

Measured on that CPU (RESULTS.md): a NeuroSeg-III forward + backward at 512 px took
45.4 s for 8 images with lax's gradient, 15.6 s with one strided copy per tap held
together, and 12.4-14.0 s with the taps looped over row blocks; XLA's temporaries were
3.17, 4.96 and 3.23 GiB. The EM steps (8 crops of 128 px) do not gain: the U-Net's
takes 1.09-1.14 s against 1.12-1.18 s with lax's gradient, UNETR's 1.19-1.26 s against
1.05-1.18 s, so `conv_blocks` keeps lax's gradient.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def channels_last(rank: int) -> tuple[str, str, str]:
  """Dimension names of `rank` spatial axes, channels last: 2 -> NHWC, HWIO, NHWC."""
  if not 1 <= rank <= 3:
    raise ValueError(f"{rank} spatial axes; 1, 2 or 3 are supported")
  spatial = "DHW"[3 - rank:]
  return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...],
             padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=channels_last(x.ndim - 2))


def _phase_rows(x: jax.Array, padding: tuple[tuple[int, int], ...],
                strides: tuple[int, ...], frame: Sequence[int]) -> jax.Array:
  """The padded input split into its stride phases, as rows [prod(s) * B * prod(Q), Cin].

  x: [B, *spatial, Cin]. Each spatial axis is padded (or cropped at its high end) to
  s * Q and split as q * s + u; phase u holds the positions u, u + s, u + 2s, ... of
  that axis. Phases lead, then the batch and the Q-frame in row-major order. With unit
  strides this is the padded input itself, flattened.
  """
  rank = x.ndim - 2
  config = [(0, 0, 0)] + [(lo, s * q - n - lo, 0) for (lo, _), s, q, n in
                          zip(padding, strides, frame, x.shape[1:-1])] + [(0, 0, 0)]
  padded = lax.pad(x, jnp.zeros((), x.dtype), config)
  if all(s == 1 for s in strides):
    return padded.reshape(-1, x.shape[-1])
  split = padded.reshape(x.shape[0], *itertools.chain(*zip(frame, strides)), x.shape[-1])
  phases_first = ([2 + 2 * axis for axis in range(rank)] + [0]
                  + [1 + 2 * axis for axis in range(rank)] + [2 * rank + 1])
  return split.transpose(phases_first).reshape(-1, x.shape[-1])


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                    strides: tuple[int, ...],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """Gradient of sum(conv(x, K) * dy) with respect to K [*window, Cin, Cout], float32.

  x: [B, *spatial, Cin]; dy: [B, *out_spatial, Cout]. Kernel tap o = s * a + u (per
  axis) reads phase u of the padded input (`_phase_rows`) shifted by a. Placing dy at
  the origin of a zero frame of the phases' shape Q = out + ceil(K / s) - 1 turns every
  tap's shift into one offset along the flattened rows, so each tap is a product of a
  contiguous row block [N, Cin] with the same dy rows [N, Cout], N = B * prod(Q) minus
  the largest shift. The taps run one after another (`lax.map`), so one block is copied
  at a time whatever the kernel size.
  """
  *window, cin, cout = kernel_shape
  batch, out = dy.shape[0], dy.shape[1:-1]
  reach = [-(-k // s) for k, s in zip(window, strides)]
  frame = [o + a - 1 for o, a in zip(out, reach)]
  row_strides = [math.prod(frame[axis + 1:]) for axis in range(len(frame))]
  rows = batch * math.prod(frame)
  used = rows - sum((a - 1) * step for a, step in zip(reach, row_strides))

  phases = _phase_rows(x, padding, strides, frame)
  dy_rows = jnp.pad(dy, ((0, 0), *[(0, q - o) for q, o in zip(frame, out)], (0, 0)))
  dy_rows = dy_rows.reshape(rows, cout)[:used]
  offsets = []
  for tap in itertools.product(*map(range, window)):
    phase = np.ravel_multi_index([t % s for t, s in zip(tap, strides)], strides)
    shift = sum((t // s) * step for t, s, step in zip(tap, strides, row_strides))
    offsets.append(int(phase) * rows + shift)

  def product(offset):
    block = lax.dynamic_slice_in_dim(phases, offset, used, axis=0)
    return lax.dot_general(block, dy_rows, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)

  if len(offsets) == 1:
    return product(offsets[0]).reshape(*window, cin, cout)
  return lax.map(product, jnp.asarray(offsets, jnp.int32)).reshape(*window, cin, cout)


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


def _is_channels_last(dimension_numbers, x_shape, kernel_shape) -> bool:
  if dimension_numbers is None or not 3 <= len(x_shape) <= 5:
    return False
  return lax.conv_dimension_numbers(x_shape, kernel_shape, dimension_numbers) == \
      lax.conv_dimension_numbers(x_shape, kernel_shape, channels_last(len(x_shape) - 2))


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
  if (not _is_channels_last(dimension_numbers, lhs.shape, rhs.shape)
      or feature_group_count != 1 or batch_group_count != 1 or precision is not None
      or preferred_element_type is not None
      or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))):
    return plain()
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(p < 0 for pair in padding for p in pair):
    return plain()
  return _conv(lhs, rhs, strides, padding)
