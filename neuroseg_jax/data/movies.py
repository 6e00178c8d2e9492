"""Lazy two-photon movie readers: multipage TIFF, folders of frame TIFFs, HDF5.

Every reader returns a `Movie`: an object with `shape == (T, H, W)`, the file's
native `dtype`, and chunk access `movie[t0:t1] -> [n, H, W] float32`. Frames are
read from disk only when sliced, so summary images can stream a 487x487x23,000
recording chunk by chunk. Each chunk read is checked for NaN/inf.

`open_movie(path)` picks the reader from the path's suffix (or "directory") via
the `MOVIE_READERS` registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import tifffile

from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry, UnknownNameError

MOVIE_READERS: Registry[Callable[..., "Movie"]] = Registry("movie format")
TIFF_SUFFIXES = (".tif", ".tiff")


def check_pixel_dtype(source, dtype) -> np.dtype:
  """Accepts integer and floating pixel types; anything else is a DataError."""
  dtype = np.dtype(dtype)
  if dtype.kind not in "uif":
    raise DataError(source, f"unsupported pixel dtype {dtype} (expected an integer or float type)")
  return dtype


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

  Subclasses set `source`, `shape`, `dtype` and implement `_read(start, stop)`
  returning the native-dtype frames [stop - start, H, W].
  """

  source: str
  shape: tuple[int, int, int]
  dtype: np.dtype

  def _validate(self) -> None:
    if len(self.shape) != 3:
      raise DataError(self.source, f"expected a 3-D stack [T, H, W], got shape {tuple(self.shape)}")
    if min(self.shape) == 0:
      raise DataError(self.source, f"empty movie of shape {tuple(self.shape)}")
    self.dtype = check_pixel_dtype(self.source, self.dtype)

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
    self.dtype = array.dtype
    self._validate()

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self._array[start:stop]


def as_movie(movie, source: str = "array") -> Movie:
  """A Movie as is; an array-like [T, H, W] wrapped in ArrayMovie."""
  return movie if isinstance(movie, Movie) else ArrayMovie(np.asarray(movie), source)


def require_file(path) -> Path:
  """The path as a Path; a DataError "file not found" if it is not a file."""
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file not found")
  return path


class TiffPagesMovie(Movie):
  """A multipage TIFF read page by page (used when it cannot be memory-mapped)."""

  def __init__(self, tiff: tifffile.TiffFile, source: str):
    self.source = source
    self._tiff = tiff
    series = tiff.series[0]
    self.shape = tuple(series.shape)
    self.dtype = series.dtype
    self._validate()

  def _read(self, start: int, stop: int) -> np.ndarray:
    if stop == start:
      return np.zeros((0,) + self.shape[1:], self.dtype)
    return self._tiff.asarray(key=range(start, stop), series=0).reshape(-1, *self.shape[1:])

  def close(self) -> None:
    self._tiff.close()


@MOVIE_READERS.register(".tif")
@MOVIE_READERS.register(".tiff")
def read_tiff_stack(path) -> Movie:
  """A multipage TIFF [T, H, W]: memory-mapped when uncompressed and contiguous,
  otherwise read lazily page by page (or, if pages are not frames, all at once)."""
  path = require_file(path)
  try:
    tiff = tifffile.TiffFile(path)
  except Exception as e:  # tifffile raises several types for unreadable files.
    raise DataError(path, f"not a readable TIFF file ({e})") from e
  with tiff:
    if not tiff.series:
      raise DataError(path, "TIFF file contains no images")
    series = tiff.series[0]
    if len(series.shape) != 3:
      raise DataError(path, f"expected a 3-D stack [T, H, W], got shape {tuple(series.shape)}")
    check_pixel_dtype(path, series.dtype)
    contiguous = series.dataoffset is not None
    if not contiguous and len(series.pages) != series.shape[0]:
      return ArrayMovie(series.asarray(), path)
  if contiguous:
    return ArrayMovie(tifffile.memmap(path, mode="r"), path)
  return TiffPagesMovie(tifffile.TiffFile(path), str(path))


def _natural_key(path: Path):
  """Sort key treating digit runs as numbers: frame2.tif < frame10.tif."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FrameFolderMovie(Movie):
  """A folder of single-frame TIFFs [H, W] (natural filename order) as [T, H, W]."""

  def __init__(self, folder):
    folder = Path(folder)
    if not folder.is_dir():
      raise DataError(folder, "folder not found")
    self.source = str(folder)
    self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES),
                        key=_natural_key)
    if not self.files:
      raise DataError(folder, "no .tif/.tiff frames in folder")
    first = self._read_frame(self.files[0])
    self.shape = (len(self.files),) + first.shape
    self.dtype = first.dtype
    self._validate()

  def _read_frame(self, path: Path) -> np.ndarray:
    try:
      frame = tifffile.imread(path)
    except Exception as e:
      raise DataError(path, f"not a readable TIFF file ({e})") from e
    if frame.ndim != 2:
      raise DataError(path, f"expected one 2-D frame [H, W], got shape {frame.shape}")
    return frame

  def _read(self, start: int, stop: int) -> np.ndarray:
    frames = []
    for path in self.files[start:stop]:
      frame = self._read_frame(path)
      if frame.shape != self.shape[1:] or frame.dtype != self.dtype:
        raise DataError(path, f"frame is {frame.shape} {frame.dtype}, but the first frame is "
                        f"{self.shape[1:]} {self.dtype}")
      frames.append(frame)
    return np.stack(frames) if frames else np.zeros((0,) + self.shape[1:], self.dtype)


@MOVIE_READERS.register("directory")
def read_frame_folder(path) -> Movie:
  return FrameFolderMovie(path)


class HDF5Movie(Movie):
  """An HDF5 dataset [T, H, W] (ABO / SUNS layout: dataset "mov"), read lazily."""

  def __init__(self, path, dataset: str = "mov"):
    path = require_file(path)
    self.source = str(path)
    try:
      self._file = h5py.File(path, "r")
    except OSError as e:
      raise DataError(path, f"not a readable HDF5 file ({e})") from e
    if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
      keys = list(self._file.keys())
      self._file.close()
      raise DataError(path, f"no dataset {dataset!r} (found: {', '.join(keys) or 'nothing'})")
    self._data = self._file[dataset]
    self.shape = tuple(self._data.shape)
    self.dtype = self._data.dtype
    try:
      self._validate()
    except DataError:
      self._file.close()
      raise

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self._data[start:stop]

  def close(self) -> None:
    self._file.close()


@MOVIE_READERS.register(".h5")
@MOVIE_READERS.register(".hdf5")
def read_hdf5_movie(path, dataset: str = "mov") -> Movie:
  return HDF5Movie(path, dataset)


def open_movie(path, **reader_args) -> Movie:
  """Opens a movie [T, H, W] with the reader registered for its suffix (or folder)."""
  path = Path(path)
  if not path.exists():
    raise DataError(path, "file not found")
  kind = "directory" if path.is_dir() else path.suffix.lower()
  try:
    reader = MOVIE_READERS.get(kind)
  except UnknownNameError as e:
    raise DataError(path, str(e)) from e
  return reader(path, **reader_args)
