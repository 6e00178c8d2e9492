"""What every reader of image stacks [N, H, W] shares: the `Stack` interface and the
checks on paths and pixel types (`data/stacks.py` and `data/tiff_stack.py` have the readers)."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from neuroseg_jax.errors import DataError

ALL = slice(None)


def require_file(path) -> Path:
  """The path as a Path; a DataError "file not found" if it is not a file."""
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file not found")
  return path


def check_pixel_dtype(source, dtype) -> np.dtype:
  """Accepts integer and floating pixel types; anything else is a DataError."""
  dtype = np.dtype(dtype)
  if dtype.kind not in "uif":
    raise DataError(source, f"unsupported pixel dtype {dtype} (expected an integer or float type)")
  return dtype


def check_stack(source, shape, dtype) -> np.dtype:
  """DataError unless `shape` is a non-empty [N, H, W] of integer or float pixels."""
  if len(shape) != 3:
    raise DataError(source, f"expected a 3-D stack [N, H, W], got shape {tuple(shape)}")
  if min(shape) == 0:
    raise DataError(source, f"empty stack of shape {tuple(shape)}")
  return check_pixel_dtype(source, dtype)


class Stack(abc.ABC):
  """[N, H, W] images on disk; subclasses set `source`, `shape`, `dtype`."""
  source: str
  shape: tuple[int, int, int]
  dtype: np.dtype

  @abc.abstractmethod
  def read(self, start: int, stop: int, rows: slice = ALL, cols: slice = ALL) -> np.ndarray:
    """Items start..stop-1 (0 <= start <= stop <= N) -> [stop - start, h, w], native dtype."""

  def view(self, start: int, stop: int) -> np.ndarray:
    """Items start..stop-1 [stop - start, H, W], native dtype, not to be written to:
    a view of the file's memory map where it has one (no copy), else `read`."""
    return self.read(start, stop)

  def close(self) -> None:
    """Releases open file handles (no-op for readers that hold none)."""

  def attributes(self) -> list[dict]:
    """Metadata attributes, nearest first (the dataset's, then its parent group's);
    empty for formats without them."""
    return []

  def __len__(self) -> int:
    return self.shape[0]

  def _empty(self, rows: slice, cols: slice) -> np.ndarray:
    """[0, h, w]: what reading no items returns."""
    height, width = (len(range(*s.indices(n))) for s, n in zip((rows, cols), self.shape[1:]))
    return np.zeros((0, height, width), self.dtype)
