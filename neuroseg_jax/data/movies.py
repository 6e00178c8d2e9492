"""Lazy two-photon movies [T, H, W]: multipage TIFF, folders of frame files, HDF5.

Every reader returns a `Movie`: an object with `shape == (T, H, W)`, the file's
native `dtype`, and chunk access `movie[t0:t1] -> [n, H, W] float32`. Frames are
read from disk only when sliced, so summary images can stream a 487x487x23,000
recording chunk by chunk. Each chunk read is checked for NaN/inf, which costs one
pass over frames that are being read anyway.

`stream_chunks(movie, n)` reads a movie chunk by chunk into two reused buffers,
one chunk ahead on a background thread, for the streamed passes over a recording.

`open_movie(path)` reads any stack `stacks.open_stack` reads (the file formats and
their checks live there, shared with EM volumes); HDF5 movies default to the
dataset "mov" of the ABO / SUNS layout.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from neuroseg_jax.data import stack_base
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

  Readers of files set `source`, `shape`, `dtype` (checked by `stack_base.check_stack`)
  and implement `_read(start, stop)` returning the native-dtype frames
  [stop - start, H, W]. Movies that transform another one's frames (e.g. motion
  correction) override `read_into` instead, so each frame is written once, straight
  into the caller's buffer.
  """

  source: str
  shape: tuple[int, int, int]
  dtype: np.dtype

  def _read(self, start: int, stop: int) -> np.ndarray:
    raise NotImplementedError

  def __len__(self) -> int:
    return self.shape[0]

  def read_native(self, start: int, stop: int) -> np.ndarray:
    """Frames [start, min(stop, T)) in the file's dtype [n, H, W], checked for NaN/inf."""
    frames = np.asarray(self._read(start, min(stop, len(self))))
    check_finite(self.source, frames, start)
    return frames

  def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
    """Writes frames [start, stop) into `out` [stop - start, H, W] (float32, any
    strides), converting from the native dtype in the same copy."""
    out[...] = self.read_native(start, stop)

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
    frames = np.empty((stop - start, *self.shape[1:]), np.float32)
    self.read_into(start, stop, frames)
    return frames

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
    self.dtype = stack_base.check_stack(self.source, self.shape, array.dtype)

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self._array[start:stop]


def as_movie(movie, source: str = "array") -> Movie:
  """A Movie as is; an array-like [T, H, W] wrapped in ArrayMovie."""
  return movie if isinstance(movie, Movie) else ArrayMovie(np.asarray(movie), source)


class StackMovie(Movie):
  """A `stack_base.Stack` [T, H, W] (TIFF, frame folder, HDF5 dataset) as a Movie."""

  def __init__(self, stack: stack_base.Stack):
    self.stack = stack
    self.source, self.shape, self.dtype = stack.source, stack.shape, stack.dtype

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self.stack.view(start, stop)  # only read (and copied) by the callers

  def close(self) -> None:
    self.stack.close()


def open_movie(path, **reader_args) -> Movie:
  """Opens a movie [T, H, W] with `stacks.open_stack` (`reader_args` go to the reader:
  `allow_truncated=True` for a cut TIFF, `key` for HDF5, default "mov")."""
  if Path(path).suffix.lower() in stacks.HDF5_SUFFIXES:
    reader_args.setdefault("key", "mov")
  return StackMovie(stacks.open_stack(path, **reader_args))


def _aligned_buffer(shape, dtype=np.float32, alignment: int = 64) -> np.ndarray:
  """An uninitialised host array whose data starts on an `alignment`-byte boundary
  (so XLA:CPU can use it without a copy)."""
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  offset = -raw.ctypes.data % alignment
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def stream_chunks(movie, chunk_size: int, border: int = 0, fill=None,
                  wait: Callable[[], object] = lambda: None, frames_last: bool = False,
                  readers: int = 1) -> Iterator[tuple[np.ndarray, int]]:
  """Yields (frames, n_valid): the movie's consecutive chunks as float32 arrays
  [chunk_size, H + 2 border, W + 2 border] (with `frames_last`: [H + 2 border,
  W + 2 border, chunk_size], each pixel's values of the chunk side by side), each
  frame inside a `border` of zeros, the last chunk padded after its n_valid real
  frames with copies of `fill` [H, W] (None: of its first frame).

  Two reused, 64-byte aligned buffers alternate, and the next chunk is read into one
  on background threads (`movie.read_into`: reading, motion correction and the cast
  to float32 in one copy; `readers` threads share each chunk's frames) while the
  caller works on the other: on 2 cores, reading overlaps the arithmetic and no
  frame is copied twice. The caller must be done with a yielded buffer before it asks
  for the next chunk but one; `wait()` is called before a buffer is refilled and
  must block until then (e.g. `jax.block_until_ready` on a step that uses the buffer
  without a copy). A chunk that cannot be read raises when it is reached.
  """
  movie = as_movie(movie)
  num_frames, height, width = movie.shape
  starts = range(0, num_frames, chunk_size)
  frame_shape = (height + 2 * border, width + 2 * border)
  buffers = []
  for _ in range(min(2, len(starts))):
    shape = (*frame_shape, chunk_size) if frames_last else (chunk_size, *frame_shape)
    buffers.append(_aligned_buffer(shape))
    buffers[-1][...] = 0.0

  def frames_of(index: int) -> np.ndarray:
    """[chunk_size, H, W] view of the frames in the buffer of chunk `index`."""
    frames = buffers[index % 2]
    frames = frames.transpose(2, 0, 1) if frames_last else frames
    return frames[:, border:border + height, border:border + width]

  def submit(index: int) -> tuple[int, list[concurrent.futures.Future]]:
    start, frames = starts[index], frames_of(index)
    count = min(chunk_size, num_frames - start)
    bounds = np.linspace(0, count, min(readers, count) + 1).astype(int)
    return count, [executor.submit(movie.read_into, start + lo, start + hi, frames[lo:hi])
                   for lo, hi in zip(bounds[:-1], bounds[1:])]

  with concurrent.futures.ThreadPoolExecutor(max_workers=readers) as executor:
    pending = submit(0) if starts else None
    for index in range(len(starts)):
      n_valid, parts = pending
      for part in parts:
        part.result()
      frames = frames_of(index)
      frames[n_valid:] = frames[0] if fill is None else fill
      if index + 1 < len(starts):
        wait()
        pending = submit(index + 1)
      yield buffers[index % 2], n_valid
