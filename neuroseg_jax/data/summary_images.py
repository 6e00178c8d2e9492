"""Summary images of a movie [T, H, W], streamed in chunks of frames through JAX.

`compute_summary_images` reads `chunk_size` frames at a time (the last chunk is
padded to the same static shape with copies of the reference frame, which add
nothing to the centred sums), so one jit-compiled step serves the whole movie
and memory stays bounded by one chunk plus a few [H, W] accumulators, whatever
T is (e.g. 487x487x23,000).

Numerics: accumulators are float32. Frames are centred by the per-pixel mean of
the first chunk (`ref`, the reference frame) before sums, sums of squares and
neighbour cross-products are accumulated, which removes the large common offset
of raw fluorescence (baseline ~1000s of counts) and so the cancellation in
E[x^2] - E[x]^2. Sums are two-level: frames are added into per-chunk partial
sums, which are then added to the running totals, so float32 rounding grows like
(chunk_size + T / chunk_size) * eps rather than T * eps. The final combination
of the [H, W] accumulators runs once, on the host, in float64.

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
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.movies import as_movie, stream_chunks
from neuroseg_jax.registry import Registry

SUMMARY_NAMES = ("mean", "max", "std", "robust_max", "corr")
# Neighbour offsets (d_row, d_col); the other four neighbours are their mirrors.
_FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))
_FLAT_RELATIVE_STD = 1e-6
_ADDITIVE = ("sum", "sumsq", "cross")  # accumulators summed per chunk, then across chunks.
DEFAULT_CHUNK_SIZE = 50  # frames; small chunks reuse host/device buffers.
_MAX_GROUP = 10  # frames per scan step; 10 measured fastest on a 2-core CPU (5: 1.2x slower).


def _overlap(d: int, n: int) -> tuple[slice, slice]:
  """Along an axis of length n: slices of the p whose neighbour p + d is inside,
  and of those neighbours."""
  return slice(max(-d, 0), n - max(d, 0)), slice(max(d, 0), n - max(-d, 0))


def _pixel_pairs(x, d_row: int, d_col: int):
  """[..., H, W] (NumPy or JAX) -> (x[p], x[p + d]) over the pixels p whose
  neighbour p + d exists, each [..., H - |d_row|, W - |d_col|]."""
  (rows_p, rows_q), (cols_p, cols_q) = (_overlap(d_row, x.shape[-2]),
                                        _overlap(d_col, x.shape[-1]))
  return x[..., rows_p, cols_p], x[..., rows_q, cols_q]


def _place(values: np.ndarray, d_row: int, d_col: int) -> np.ndarray:
  """Inverse of the overlap crop: values at the pixels p of `_pixel_pairs`,
  zero-padded back to [H, W]."""
  return np.pad(values, [(max(-d_row, 0), max(d_row, 0)), (max(-d_col, 0), max(d_col, 0))])


def shift_zero(x: np.ndarray, d_row: int, d_col: int) -> np.ndarray:
  """[H, W] -> [H, W] with out[r, c] = x[r + d_row, c + d_col], zero where that
  index falls outside the image."""
  return _place(_pixel_pairs(x, d_row, d_col)[1], d_row, d_col)


def staged_chunks(movie, chunk_size: int, fill=None, wait: Callable[[], object] = lambda: None,
                  border: int = 0, readers: int = 1) -> Iterator[tuple[jax.Array, int]]:
  """`movies.stream_chunks` as device arrays: (frames [chunk_size, H + 2 border,
  W + 2 border], n_valid), which XLA:CPU reads from the aligned host buffers without
  a copy (hence `wait`, see there)."""
  for chunk, n_valid in stream_chunks(movie, chunk_size, border, fill, wait, readers=readers):
    yield jax.device_put(chunk), n_valid


def _chunk_frames(chunk_size: int, window: int, num_frames: int) -> int:
  """Chunk length: a multiple of `window` (so windows never straddle chunks),
  no longer than the movie rounded up to whole windows."""
  whole_windows = -(-num_frames // window) * window
  return min(max(window, chunk_size // window * window), whole_windows)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _empty_state(height: int, width: int) -> dict:
  """Fresh accumulators (distinct buffers: the step donates them; one compiled
  call rather than many eager ones). "cross" holds, per forward offset d, the sum
  of products x[p] x[p + d] (zero where the neighbour p + d is outside)."""
  full = lambda value: jnp.full((height, width), value, jnp.float32)
  return {"sum": full(0.0), "sumsq": full(0.0), "window_sum": full(0.0),
          "max": full(-jnp.inf), "robust_max": full(-jnp.inf),
          "cross": tuple(full(0.0) for _ in _FORWARD_OFFSETS)}


def _group_size(window: int) -> int:
  """Frames per scan step: the largest divisor of `window` up to _MAX_GROUP, so
  windows end on group boundaries."""
  return max(d for d in range(1, _MAX_GROUP + 1) if window % d == 0)


def _group_sums(frames: jax.Array, ref: jax.Array) -> tuple:
  """Zero-bordered frames [g, H + 2, W + 2] and reference [H + 2, W + 2] ->
  (sum, sum of squares, the four neighbour cross-product sums, max), each [H, W],
  over the g frames of the centred values frames - ref.

  One variadic reduction over the frame axis: XLA:CPU emits a single loop that
  reads each frame once for all seven results (measured ~1.2x faster than explicit
  elementwise chains, which XLA:CPU fuses into one loop per result, and ~30x faster
  than separate reductions). The zero border gives every result the same [H, W]
  shape and makes each neighbour product of an edge pixel with a pixel outside
  zero; the neighbour slices are fused, not copied.
  """
  height, width = frames.shape[1] - 2, frames.shape[2] - 2
  centred = frames - ref
  inner = centred[:, 1:-1, 1:-1]
  neighbours = [centred[:, 1 + dr:1 + dr + height, 1 + dc:1 + dc + width]
                for dr, dc in _FORWARD_OFFSETS]
  operands = (inner, inner * inner, *(inner * n for n in neighbours), frames[:, 1:-1, 1:-1])

  def combine(a, b):
    return (*(x + y for x, y in zip(a[:-1], b[:-1])), jnp.maximum(a[-1], b[-1]))

  zero = jnp.float32(0.0)
  return jax.lax.reduce(operands, (zero,) * 6 + (jnp.float32(-jnp.inf),), combine, (0,))


def _add_frames(ref: jax.Array, window: int, n_valid, state: dict, inputs) -> tuple[dict, None]:
  """Scan step: adds a group of g zero-bordered frames [g, H + 2, W + 2] to `state`.

  inputs = (frames, end: number of chunk frames up to and including this group).
  Padding frames equal `ref`, so they add nothing to the centred sums and cannot
  raise the max; only robust_max must skip windows that reach past n_valid.
  """
  frames, end = inputs
  total, squares, *cross, frame_max = _group_sums(frames, ref)
  window_sum = state["window_sum"] + total
  window_end = end % window == 0  # chunks start on window boundaries.
  robust_max = jnp.where(window_end & (end <= n_valid),
                         jnp.maximum(state["robust_max"], window_sum / window + ref[1:-1, 1:-1]),
                         state["robust_max"])
  return {"sum": state["sum"] + total, "sumsq": state["sumsq"] + squares,
          "window_sum": jnp.where(window_end, 0.0, window_sum),
          "max": jnp.maximum(state["max"], frame_max), "robust_max": robust_max,
          "cross": tuple(a + b for a, b in zip(state["cross"], cross))}, None


@functools.partial(jax.jit, static_argnames="window", donate_argnums=0)
def _accumulate(state: dict, chunk: jax.Array, n_valid, ref: jax.Array, window: int) -> dict:
  """Adds one chunk of zero-bordered frames [C, H + 2, W + 2] whose first n_valid
  frames are real and the rest copies of `ref` [H + 2, W + 2] (see `staged_chunks`).

  The scan over groups is unrolled: each group's reduction then reads a static
  slice of the chunk, where the rolled loop's dynamic slice inside the reduction
  made the kernel 3.2x slower (0.51-0.53 against 0.16 CPU-ms a 487 x 487 frame on
  XLA:CPU's two threads, freed memory kept: `runtime.keep_freed_memory`).
  """
  group = _group_size(window)
  num_groups = chunk.shape[0] // group
  groups = chunk.reshape(num_groups, group, *chunk.shape[1:])
  ends = (jnp.arange(num_groups) + 1) * group
  step = functools.partial(_add_frames, ref, window, n_valid)
  partial = {**state, **{k: jax.tree.map(jnp.zeros_like, state[k]) for k in _ADDITIVE}}
  partial = jax.lax.scan(step, partial, (groups, ends), unroll=True)[0]
  return {**partial, **{k: jax.tree.map(jnp.add, state[k], partial[k]) for k in _ADDITIVE}}


def _finalize(state: dict, ref: np.ndarray, num_frames: int) -> dict:
  """Running sums -> the summary images [H, W] float32 (one pass over [H, W]
  arrays, done on the host in float64)."""
  state = jax.tree.map(lambda a: np.asarray(a, np.float64), state)
  ref = np.asarray(ref, np.float64)
  mean_centred = state["sum"] / num_frames
  std = np.sqrt(np.maximum(state["sumsq"] / num_frames - mean_centred**2, 0.0))
  mean = mean_centred + ref
  resolvable = std > _FLAT_RELATIVE_STD * np.abs(mean)
  corr_sum, neighbours = np.zeros_like(std), np.zeros_like(std)
  for cross, (dr, dc) in zip(state["cross"], _FORWARD_OFFSETS):
    exists = shift_zero(np.ones_like(std), dr, dc)
    cov = cross / num_frames - mean_centred * shift_zero(mean_centred, dr, dc)
    both = resolvable & shift_zero(resolvable, dr, dc)
    corr = np.divide(cov, std * shift_zero(std, dr, dc), out=np.zeros_like(cov), where=both)
    corr = np.clip(corr, -1.0, 1.0)
    corr_sum += corr + shift_zero(corr, -dr, -dc)  # pixel p and its mirror neighbour p + d.
    neighbours += exists + shift_zero(exists, -dr, -dc)
  images = {"mean": mean, "max": state["max"], "std": std, "robust_max": state["robust_max"],
            "corr": corr_sum / neighbours}
  return {name: image.astype(np.float32) for name, image in images.items()}


def compute_summary_images(movie, chunk_size: int = DEFAULT_CHUNK_SIZE, window: int = 10,
                           readers: int = 2) -> dict:
  """Movie [T, H, W] (a Movie or an array) -> {name: [H, W] float32} for SUMMARY_NAMES.

  `chunk_size` frames are read and reduced at a time (rounded to a multiple of
  `window`, the robust-max window), each chunk by `readers` threads (reading and
  motion correction, `movies.stream_chunks`: two took 7.7-7.8 s against 8.2-8.4 s
  for 23,000 motion-corrected 487 x 487 frames). T must be at least `window`.
  """
  movie = as_movie(movie)
  num_frames, height, width = movie.shape
  if num_frames < window:
    raise DataError(movie.source, f"{num_frames} frames, fewer than the robust-max window "
                    f"of {window} frames")
  chunk_frames = _chunk_frames(chunk_size, window, num_frames)
  ref = movie[:chunk_frames].mean(axis=0, dtype=np.float64).astype(np.float32)
  state, ref_on_device = _empty_state(height, width), jnp.asarray(np.pad(ref, 1))
  wait = lambda: jax.block_until_ready(state)  # sees the latest `state`.
  for chunk, n_valid in staged_chunks(movie, chunk_frames, ref, wait, border=1, readers=readers):
    state = _accumulate(state, chunk, n_valid, ref_on_device, window)
  return _finalize(state, ref, num_frames)


@functools.partial(jax.jit, static_argnames="window")
def _window_max(chunk: jax.Array, window: int) -> jax.Array:
  """[C, H, W] -> [C // window, H, W] max over each window of frames."""
  return jnp.max(chunk.reshape(-1, window, *chunk.shape[1:]), axis=1)


def windowed_max_projections(movie, window: int = 10,
                             chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Movie [T, H, W] -> [T // window, H, W] float32: the max projection of each
  consecutive non-overlapping window of frames (TiCo's unlabeled images); the last
  T mod window frames are left out."""
  movie = as_movie(movie)
  if len(movie) < window:
    raise DataError(movie.source, f"{len(movie)} frames, fewer than one window of {window}")
  projections = []
  for chunk, n_valid in staged_chunks(movie, _chunk_frames(chunk_size, window, len(movie))):
    projections.append(np.asarray(_window_max(chunk, window))[:n_valid // window])
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
