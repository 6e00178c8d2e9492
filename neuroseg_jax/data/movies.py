"""Lazy two-photon movies [T, H, W]: multipage TIFF, folders of frame files, HDF5.

Every reader returns a `Movie`: an object with `shape == (T, H, W)`, the file's
native `dtype`, and chunk access `movie[t0:t1] -> [n, H, W] float32`. Frames are
read from disk only when sliced, so summary images can stream a 487x487x23,000
recording chunk by chunk. Each chunk read is checked for NaN/inf, which costs one
pass over frames that are being read anyway.

`open_movie(path)` reads any stack `stacks.open_stack` reads (the file formats and
their checks live there, shared with EM volumes); HDF5 movies default to the
dataset "mov" of the ABO / SUNS layout.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np

from neuroseg_jax.data import stacks
from neuroseg_jax.errors import DataError


def check_finite(source, values: np.ndarray, first_frame: int = 0) -> None:
  """Raises a DataError naming the first frame of `values` [n, ...] with NaN/inf."""
  if values.dtype.kind != "f":
    return
  finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
  if not finite.all():
    bad = first_frame + int(np.argmin(finite))
    raise DataError(source, f"non-finite values (NaN or inf) in frame {bad}")


class Movie:
  """A lazily read movie [T, H, W].

  Subclasses set `source`, `shape`, `dtype` (checked by `stacks.check_stack`) and
  implement `_read(start, stop)` returning the native-dtype frames [stop - start, H, W].
  """

  source: str
  shape: tuple[int, int, int]
  dtype: np.dtype

  def _read(self, start: int, stop: int) -> np.ndarray:
    raise NotImplementedError

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    """movie[t0:t1] -> [n, H, W] float32; movie[t] -> [H, W] float32."""
    if isinstance(index, (int, np.integer)):
      t = int(index) + (len(self) if index < 0 else 0)
      if not 0 <= t < len(self):
        raise IndexError(f"frame {index} out of range for {len(self)} frames")
      return self[t:t + 1][0]
    if not isinstance(index, slice) or index.step not in (None, 1):
      raise TypeError(f"movies are sliced with t0:t1 (step 1), got {index!r}")
    start, stop, _ = index.indices(len(self))
    stop = max(start, stop)
    frames = np.asarray(self._read(start, stop))
    check_finite(self.source, frames, start)
    return frames.astype(np.float32, copy=False)

  def __array__(self, dtype=None, copy=None):
    frames = self[:]
    return frames if dtype is None else frames.astype(dtype)

  def close(self) -> None:
    """Releases open file handles (no-op for readers that hold none)."""

  def __enter__(self) -> "Movie":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class ArrayMovie(Movie):
  """An in-memory (or np.memmap) array [T, H, W] seen as a Movie."""

  def __init__(self, array: np.ndarray, source: str = "array"):
    self.source = str(source)
    self._array = array
    self.shape = tuple(array.shape)
    self.dtype = stacks.check_stack(self.source, self.shape, array.dtype)

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self._array[start:stop]


def as_movie(movie, source: str = "array") -> Movie:
  """A Movie as is; an array-like [T, H, W] wrapped in ArrayMovie."""
  return movie if isinstance(movie, Movie) else ArrayMovie(np.asarray(movie), source)


class StackMovie(Movie):
  """A `stacks.Stack` [T, H, W] (TIFF, frame folder, HDF5 dataset) as a Movie."""

  def __init__(self, stack: stacks.Stack):
    self.stack = stack
    self.source, self.shape, self.dtype = stack.source, stack.shape, stack.dtype

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self.stack.read(start, stop)

  def close(self) -> None:
    self.stack.close()


def open_movie(path, **reader_args) -> Movie:
  """Opens a movie [T, H, W] with `stacks.open_stack` (`reader_args` go to the reader:
  `allow_truncated=True` for a cut TIFF, `key` for HDF5, default "mov")."""
  if Path(path).suffix.lower() in stacks.HDF5_SUFFIXES:
    reader_args.setdefault("key", "mov")
  return StackMovie(stacks.open_stack(path, **reader_args))


class ReadAhead(Movie):
  """`movie` read one chunk ahead in a background thread: after serving frames
  [t0, t1), it starts reading [t1, 2 t1 - t0) (and whatever processing `movie`'s reads
  do, e.g. motion correction), so a sequential pass overlaps reading with the
  caller's work on the previous chunk. Other access patterns are served directly.

  Every read of `movie` runs on the one background thread, so readers that are not
  thread-safe stay correct; memory is at most one chunk more. NumPy, tifffile and
  scipy.fft release the GIL for the heavy parts, so on 2 cores the two overlap.
  """

  def __init__(self, movie):
    self._movie = as_movie(movie)
    self.source, self.shape, self.dtype = self._movie.source, self._movie.shape, np.float32
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self._pending: tuple[int, int, concurrent.futures.Future] | None = None

  def _read(self, start: int, stop: int) -> np.ndarray:
    pending, self._pending = self._pending, None
    if pending is not None and pending[:2] == (start, stop):
      frames = pending[2].result()
    else:
      if pending is not None:
        pending[2].cancel()
      frames = self._executor.submit(self._movie.__getitem__, slice(start, stop)).result()
    following = (stop, min(2 * stop - start, len(self)))
    if following[0] < following[1]:
      self._pending = (*following, self._executor.submit(self._movie.__getitem__,
                                                         slice(*following)))
    return frames

  def close(self) -> None:
    if self._pending is not None:
      self._pending[2].cancel()
    self._executor.shutdown(wait=True)
    self._movie.close()
