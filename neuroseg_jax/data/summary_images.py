"""Summary images of a movie [T, H, W], streamed in chunks of frames through JAX.

`compute_summary_images` reads `chunk_size` frames at a time (the last chunk is
zero-padded to the same static shape and masked), so one jit-compiled step
serves the whole movie and memory stays bounded by one chunk plus a few [H, W]
accumulators, whatever T is (e.g. 487x487x23,000).

Numerics: accumulators are float32. Frames are centred by the per-pixel mean of
the first chunk (`ref`) before sums, sums of squares and neighbour
cross-products are accumulated, which removes the large common offset of raw
fluorescence (baseline ~1000s of counts) and so the cancellation in
E[x^2] - E[x]^2. Each chunk is reduced on its own before it is added to the
running totals, which keeps the float32 rounding error near sqrt(#chunks) * eps.

Definitions ([H, W] float32 each):
  mean, max, std (population, ddof=0);
  robust_max: max over the means of the T // window consecutive non-overlapping
    windows of `window` frames (the last T mod window frames are left out);
  corr: each pixel's mean Pearson correlation (over time) with its 8 neighbours;
    border pixels average over the neighbours that exist; a pixel whose trace is
    constant (std <= 1e-6 |mean|) has correlation 0 with everything.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax.data.errors import DataError
from neuroseg_jax.data.movies import as_movie
from neuroseg_jax.registry import Registry

SUMMARY_NAMES = ("mean", "max", "std", "robust_max", "corr")
# Neighbour offsets (d_row, d_col); the other four neighbours are their mirrors.
_FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))
_FLAT_RELATIVE_STD = 1e-6


def shift_zero(x: jax.Array, d_row: int, d_col: int) -> jax.Array:
  """[..., H, W] -> [..., H, W] with out[..., r, c] = x[..., r + d_row, c + d_col],
  zero where that index falls outside the image (|d| <= 1)."""
  height, width = x.shape[-2:]
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
  return padded[..., 1 + d_row:1 + d_row + height, 1 + d_col:1 + d_col + width]


def padded_chunks(movie, chunk_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Yields (frames [chunk_size, H, W] float32, n_valid): consecutive chunks of
  the movie, the last one zero-padded after its n_valid real frames."""
  num_frames = len(movie)
  for start in range(0, num_frames, chunk_size):
    chunk = movie[start:start + chunk_size]
    n_valid = len(chunk)
    if n_valid < chunk_size:
      chunk = np.concatenate([chunk, np.zeros((chunk_size - n_valid,) + chunk.shape[1:],
                                              np.float32)])
    yield chunk, n_valid


def _chunk_frames(chunk_size: int, window: int, num_frames: int) -> int:
  """Chunk length: a multiple of `window` (so windows never straddle chunks),
  no longer than the movie rounded up to whole windows."""
  whole_windows = -(-num_frames // window) * window
  return min(max(window, chunk_size // window * window), whole_windows)


def _valid_frames(chunk: jax.Array, n_valid) -> jax.Array:
  """[C] bool: which frames of a padded chunk are real."""
  return jnp.arange(chunk.shape[0]) < n_valid


def _window_stack(chunk: jax.Array, window: int) -> jax.Array:
  """[C, H, W] -> [C // window, window, H, W]."""
  return chunk.reshape(chunk.shape[0] // window, window, *chunk.shape[1:])


@jax.jit
def _first_chunk_mean(chunk: jax.Array, n_valid) -> jax.Array:
  """[C, H, W] padded chunk -> [H, W] mean of its n_valid real frames."""
  return jnp.sum(chunk, axis=0) / n_valid


def _empty_state(height: int, width: int) -> dict:
  """Fresh accumulators (distinct buffers: the step donates them)."""
  zeros = lambda *lead: jnp.zeros((*lead, height, width), jnp.float32)
  minus_inf = lambda: jnp.full((height, width), -jnp.inf, jnp.float32)
  return {"sum": zeros(), "sumsq": zeros(), "max": minus_inf(), "robust_max": minus_inf(),
          "cross": zeros(len(_FORWARD_OFFSETS))}


@functools.partial(jax.jit, static_argnames="window", donate_argnums=0)
def _accumulate(state: dict, chunk: jax.Array, n_valid, ref: jax.Array, window: int) -> dict:
  """Adds one padded chunk [C, H, W] (n_valid real frames) to the running sums."""
  valid = _valid_frames(chunk, n_valid)[:, None, None]
  centred = jnp.where(valid, chunk - ref, 0.0)
  window_means = jnp.mean(_window_stack(centred, window), axis=1) + ref
  whole_window = (jnp.arange(window_means.shape[0]) + 1) * window <= n_valid
  cross = jnp.stack([jnp.sum(centred * shift_zero(centred, dr, dc), axis=0)
                     for dr, dc in _FORWARD_OFFSETS])
  return {
      "sum": state["sum"] + jnp.sum(centred, axis=0),
      "sumsq": state["sumsq"] + jnp.sum(centred * centred, axis=0),
      "max": jnp.maximum(state["max"], jnp.max(jnp.where(valid, chunk, -jnp.inf), axis=0)),
      "robust_max": jnp.maximum(state["robust_max"], jnp.max(
          jnp.where(whole_window[:, None, None], window_means, -jnp.inf), axis=0)),
      "cross": state["cross"] + cross,
  }


@jax.jit
def _finalize(state: dict, ref: jax.Array, num_frames) -> dict:
  """Running sums -> the summary images [H, W]."""
  mean_centred = state["sum"] / num_frames
  std = jnp.sqrt(jnp.maximum(state["sumsq"] / num_frames - mean_centred**2, 0.0))
  mean = mean_centred + ref
  resolvable = std > _FLAT_RELATIVE_STD * jnp.abs(mean)
  safe_std = jnp.where(resolvable, std, 1.0)
  corr_sum = jnp.zeros_like(std)
  neighbours = jnp.zeros_like(std)
  for k, (dr, dc) in enumerate(_FORWARD_OFFSETS):
    exists = shift_zero(jnp.ones_like(std), dr, dc)
    cov = state["cross"][k] / num_frames - mean_centred * shift_zero(mean_centred, dr, dc)
    both = resolvable & shift_zero(resolvable, dr, dc)
    corr = jnp.where(both, cov / (safe_std * shift_zero(safe_std, dr, dc)), 0.0) * exists
    corr = jnp.clip(corr, -1.0, 1.0)
    corr_sum += corr + shift_zero(corr, -dr, -dc)  # pixel p and its mirror neighbour p + d.
    neighbours += exists + shift_zero(exists, -dr, -dc)
  return {"mean": mean, "max": state["max"], "std": std, "robust_max": state["robust_max"],
          "corr": corr_sum / jnp.maximum(neighbours, 1.0)}


def compute_summary_images(movie, chunk_size: int = 200, window: int = 10) -> dict:
  """Movie [T, H, W] (a Movie or an array) -> {name: [H, W] float32} for SUMMARY_NAMES.

  `chunk_size` frames are read and reduced at a time (rounded to a multiple of
  `window`, the robust-max window). T must be at least `window`.
  """
  movie = as_movie(movie)
  num_frames, height, width = movie.shape
  if num_frames < window:
    raise DataError(movie.source, f"{num_frames} frames, fewer than the robust-max window "
                    f"of {window} frames")
  state, ref = _empty_state(height, width), None
  for chunk, n_valid in padded_chunks(movie, _chunk_frames(chunk_size, window, num_frames)):
    chunk = jnp.asarray(chunk)
    if ref is None:
      ref = _first_chunk_mean(chunk, n_valid)
    state = _accumulate(state, chunk, n_valid, ref, window)
  return {name: np.asarray(image) for name, image in _finalize(state, ref, num_frames).items()}


@functools.partial(jax.jit, static_argnames="window")
def _window_max(chunk: jax.Array, window: int) -> jax.Array:
  return jnp.max(_window_stack(chunk, window), axis=1)


def windowed_max_projections(movie, window: int = 10, chunk_size: int = 200) -> np.ndarray:
  """Movie [T, H, W] -> [T // window, H, W] float32: the max projection of each
  consecutive non-overlapping window of frames (TiCo's unlabeled images); the last
  T mod window frames are left out."""
  movie = as_movie(movie)
  if len(movie) < window:
    raise DataError(movie.source, f"{len(movie)} frames, fewer than one window of {window}")
  projections = []
  for chunk, n_valid in padded_chunks(movie, _chunk_frames(chunk_size, window, len(movie))):
    projections.append(np.asarray(_window_max(jnp.asarray(chunk), window))[:n_valid // window])
  return np.concatenate(projections)


# ------------------------------------------------------- network input channels

CHANNEL_NORMALIZERS = Registry("channel normalization")


@CHANNEL_NORMALIZERS.register("percentile")
def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
  """[H, W] -> [H, W] float32 in [0, 1]: the low/high percentiles map to 0/1, clipped.
  A channel with no spread becomes all zeros."""
  lo, hi = np.percentile(image, [low, high])
  if hi <= lo:
    return np.zeros(image.shape, np.float32)
  return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


@CHANNEL_NORMALIZERS.register("zscore")
def zscore_normalize(image: np.ndarray) -> np.ndarray:
  """[H, W] -> [H, W] float32 with mean 0 and std 1 (all zeros if constant)."""
  std = image.std()
  if std == 0:
    return np.zeros(image.shape, np.float32)
  return ((image - image.mean()) / std).astype(np.float32)


def stack_channels(summary: dict, names: Sequence[str] = ("max", "mean", "corr"),
                   normalization: str = "percentile") -> np.ndarray:
  """{name: [H, W]} -> [H, W, len(names)] float32, each channel normalised on its own.

  A name may repeat (e.g. ("image",) * 3 replicates one channel).
  """
  missing = [n for n in names if n not in summary]
  if missing:
    raise KeyError(f"summary images {missing} not available; have {sorted(summary)}")
  normalize = CHANNEL_NORMALIZERS.get(normalization)
  return np.stack([normalize(np.asarray(summary[n], np.float32)) for n in names], axis=-1)
