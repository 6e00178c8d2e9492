"""Fixed sine-cosine position embeddings for 1D, 2D and 3D token grids (NumPy constants).

Convention (as in MAE, He et al. 2022, extended to 3D): the embedding width is
split evenly between the grid axes, and each axis' share holds
`[sin(p * w_0), ..., sin(p * w_{k-1}), cos(p * w_0), ..., cos(p * w_{k-1})]` for
the token's integer position `p` along that axis, with frequencies
`w_i = temperature ** (-i / k)`. Axis shares are concatenated in axis order
(z, y, x for 3D; y, x for 2D).

Widths that do not split evenly: each axis gets `2 * (width // (2 * ndim))`
channels and the remaining `width - ndim * share` channels (fewer than
`2 * ndim`) are zeros at the end. E.g. width 1024 on a 3D grid: three shares of
340 channels (170 frequencies) and 4 zero channels; widths 192 / 384 / 768 split
exactly (64 / 128 / 256 per axis).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def sincos_1d(positions: np.ndarray, width: int, temperature: float = 10000.0) -> np.ndarray:
  """[M] positions -> [M, width] float64 `[sin(p w_i)..., cos(p w_i)...]`; width must be even."""
  if width % 2:
    raise ValueError(f"sincos_1d needs an even width, got {width}")
  num_freqs = width // 2
  omega = temperature ** (-np.arange(num_freqs, dtype=np.float64) / num_freqs)
  angles = np.asarray(positions, dtype=np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_position_embedding(grid_shape: Sequence[int], width: int,
                              temperature: float = 10000.0) -> np.ndarray:
  """Embedding of every cell of a token grid.

  Args:
    grid_shape: (g_0, ..., g_{n-1}) tokens per axis, n in {1, 2, 3}.
    width: embedding channels; needs at least 2 per axis.

  Returns:
    [prod(grid_shape), width] float32, rows in row-major (C) order of the grid,
    i.e. the order of `tokens.reshape(B, -1, width)` for tokens [B, *grid, width].
  """
  ndim = len(grid_shape)
  share = 2 * (width // (2 * ndim))
  if ndim == 0 or share == 0:
    raise ValueError(f"cannot embed a {ndim}-D grid in width {width} (need >= 2 channels per axis)")
  coords = np.meshgrid(*[np.arange(g) for g in grid_shape], indexing="ij")
  parts = [sincos_1d(c.ravel(), share, temperature) for c in coords]
  padding = np.zeros((int(np.prod(grid_shape)), width - ndim * share))
  return np.concatenate(parts + [padding], axis=1).astype(np.float32)
