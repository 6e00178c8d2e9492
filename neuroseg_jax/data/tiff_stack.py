"""Multipage TIFF stacks [N, H, W] (`TiffStack`), one page per item.

Memory-mapped when the pixel data are one uncompressed block, otherwise read page
by page. A TIFF is truncated when it ends before the data that its header
promises: fewer pages (or, for one contiguous block, fewer bytes) than the frame
count of its ImageJ or tifffile "shaped" metadata, a page whose data run past the
end of the file, or a broken page chain (tifffile only logs these, in a line that
does not name the file; every warning it logs while opening or reading becomes a
DataError here). `allow_truncated=True` reads the complete leading frames instead
and warns how many of the promised frames that is.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import struct
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

from neuroseg_jax.data.stack_base import ALL, Stack, check_pixel_dtype, require_file
from neuroseg_jax.errors import DataError


class _ThreadLog(logging.Handler):
  """Collects the messages of warnings and errors logged by the thread that made it."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.thread = threading.get_ident()
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    if record.thread == self.thread:
      self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_log():
  """Yields the list of what tifffile logs (WARNING and up) in this thread meanwhile."""
  handler = _ThreadLog()
  tifffile.logger().addHandler(handler)
  try:
    yield handler.messages
  finally:
    tifffile.logger().removeHandler(handler)


def _promised_frames(tiff: tifffile.TiffFile, frame_size: int) -> int:
  """Frames of `frame_size` pixels announced by ImageJ ("images") or tifffile ("shape")
  metadata; 0 if none."""
  if tiff.is_imagej:
    return int((tiff.imagej_metadata or {}).get("images", 0))
  if tiff.is_shaped:
    return sum(int(np.prod(meta.get("shape", 0))) for meta in tiff.shaped_metadata) // frame_size
  return 0


class _Page(NamedTuple):
  """What the layout checks need of one page."""
  shape: tuple
  dtype: np.dtype
  memmappable: bool  # uncompressed, in one piece, in the file's plain pixel layout.
  start: int         # file offset of the page's pixel data ...
  end: int           # ... and of the first byte after them.


def _scan(path: Path) -> tuple[tifffile.TiffFile, list[_Page], int, bool, list[str]]:
  """Opens a TIFF and walks its page chain -> (file, pages, promised frames, whether
  tifffile sees one block of pixels, what went wrong on the way)."""
  with _tifffile_log() as logged:
    try:
      tiff = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises several types for unreadable files.
      raise DataError(path, f"not a readable TIFF file ({e})") from e
    pages = []
    try:
      for page in tiff.pages:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        pages.append(_Page(page.shape, page.dtype, page.is_memmappable,
                           page.dataoffsets[0] if ends else 0, max(ends, default=0)))
    except Exception as e:  # a damaged IFD ends the chain, as a cut one does.
      logged.append(str(e))
    if not pages:
      tiff.close()
      raise DataError(path, f"not a readable TIFF file (no readable page: {'; '.join(logged)})")
    promised = max(len(pages), _promised_frames(tiff, int(np.prod(pages[0].shape))))
    one_block = bool(tiff.series) and tiff.series[0].dataoffset is not None
  return tiff, pages, promised, one_block, logged


def _count_ifds(path: Path, layout, first: int, limit: int) -> int:
  """Number of image file directories (page headers) chained from offset `first`, up
  to the first one that does not lie wholly inside the file and at most `limit` (a
  loop in the chain stops there); `layout` is tifffile's TiffFormat (byte order,
  offset and tag sizes)."""
  count_format, offset_format = layout.tagnoformat, layout.offsetformat  # with the byte order
  with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
    offset, count = first, 0
    while offset and count < limit:
      if offset + layout.tagnosize > len(data):
        break
      tags = struct.unpack_from(count_format, data, offset)[0]
      next_at = offset + layout.tagnosize + tags * layout.tagsize
      if next_at + layout.offsetsize > len(data):
        break
      offset, count = struct.unpack_from(offset_format, data, next_at)[0], count + 1
  return count


class TiffStack(Stack):
  """A multipage TIFF of 2-D grayscale pages, one page per item.

  Memory-mapped when every page is stored uncompressed, back to back (one block
  of [N, H, W] pixels, also ImageJ files with a single IFD); otherwise read page by
  page, one page decoded per item read, behind a lock (tifffile handles are not
  thread-safe).
  """

  def __init__(self, path, allow_truncated: bool = False):
    path = require_file(path)
    self.source = str(path)
    self._tiff, self._array, self._lock = None, None, threading.Lock()
    self._accepted = set()
    if self._map_described_block(path):
      return
    tiff, pages, promised, one_block, logged = _scan(path)
    self._accepted.update(logged)  # reported (and, if allow_truncated, accepted) on opening.
    try:
      self._check_pages(pages, promised, logged)
      frame_bytes = int(np.prod(pages[0].shape)) * self.dtype.itemsize
      # Back to back as far as the pages go; a single readable page (an ImageJ file
      # over 4 GB, or one cut after its first page) only if tifffile sees one block.
      contiguous = (len(pages) > 1 or one_block) and all(
          page.memmappable and page.start == pages[0].start + i * frame_bytes
          for i, page in enumerate(pages))
      file_bytes = path.stat().st_size
      if contiguous:
        complete = min(promised, (file_bytes - pages[0].start) // frame_bytes)
      else:
        complete = next((i for i, page in enumerate(pages) if page.end > file_bytes), len(pages))
      if logged or complete < promised:
        problem = (f"truncated or corrupt TIFF: {complete} of the {promised} frames it "
                   "promises are complete")
        if logged:
          problem += f" (tifffile: {'; '.join(logged)})"
        if not allow_truncated or complete == 0:
          raise DataError(path, problem)
        warnings.warn(f"{path}: {problem}; read the first {complete} frames (allow_truncated)",
                      stacklevel=2)
    except DataError:
      tiff.close()
      raise
    self.shape = (complete, *pages[0].shape)
    if contiguous:
      tiff.close()
      self._array = np.memmap(path, self.dtype.newbyteorder(tiff.byteorder), "r",
                              pages[0].start, self.shape)
    else:
      self._tiff = tiff

  def _map_described_block(self, path: Path) -> bool:
    """Memory-maps the file without parsing its pages when tifffile's own metadata
    (tifffile's "shape" or ImageJ's) describe one uncompressed block of [N, H, W]
    pixels that the file holds completely, behind an intact chain of N (or, ImageJ
    over 4 GB, one) page headers; returns whether it did. Parsing the pages of a
    23,000-page file takes ~1.3 s; this takes ~0.05 s. Anything else (no such
    metadata, a cut file, a broken chain) goes through the full scan and its checks."""
    with _tifffile_log() as logged:
      try:
        with tifffile.TiffFile(path) as tiff:
          series = tiff.series[0] if (tiff.is_shaped or tiff.is_imagej) and tiff.series else None
          if (series is None or series.dataoffset is None or len(series.shape) != 3
              or tuple(tiff.pages.first.shape) != tuple(series.shape[1:])):  # 2-D pages only
            return False
          shape, dtype, offset = series.shape, series.dtype, series.dataoffset
          byteorder, ifds = tiff.byteorder, _count_ifds(path, tiff.tiff, tiff.pages.first.offset,
                                                        limit=shape[0] + 1)
      except Exception:  # pylint: disable=broad-except  (the full scan reports it)
        return False
    if logged or shape[0] < 2 or dtype.kind not in "uif" or ifds not in (1, shape[0]):
      return False
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
      return False
    self.dtype = check_pixel_dtype(self.source, dtype)
    self.shape = tuple(int(n) for n in shape)
    self._array = np.memmap(path, self.dtype.newbyteorder(byteorder), "r", offset, self.shape)
    return True

  def _check_pages(self, pages: list[_Page], promised: int, logged: list[str]) -> None:
    """Sets `dtype`; DataError unless the pages are 2-D, alike, and more than one."""
    frame_shape, dtype = pages[0].shape, pages[0].dtype
    self.dtype = check_pixel_dtype(self.source, dtype)
    if len(frame_shape) != 2:
      raise DataError(self.source, f"expected a 3-D stack [N, H, W] of 2-D grayscale pages, got "
                      f"pages of shape {frame_shape} (samples per pixel, e.g. RGB; small stacks "
                      "need tifffile.imwrite(..., photometric='minisblack'))")
    if promised == 1 and not logged:
      raise DataError(self.source, f"expected a 3-D stack [N, H, W] of 2-D grayscale pages, got "
                      f"one page of shape {frame_shape}")
    for index, page in enumerate(pages):
      if (page.shape, page.dtype) != (frame_shape, dtype):
        raise DataError(self.source, f"page {index} is {page.shape} {page.dtype}, but page 0 "
                        f"is {frame_shape} {dtype}")

  def view(self, start, stop):
    return self.read(start, stop) if self._array is None else self._array[start:stop]

  def read(self, start, stop, rows=ALL, cols=ALL):
    if self._array is not None:
      return np.array(self._array[start:stop, rows, cols])
    pages = []
    with self._lock, _tifffile_log() as logged:
      for index in range(start, stop):
        try:
          pages.append(self._tiff.pages[index].asarray()[rows, cols])
        except Exception as e:  # tifffile / the codecs raise many types on damaged pages.
          raise DataError(self.source, f"cannot decode page {index} ({e})") from e
        new = [message for message in logged if message not in self._accepted]
        if new:
          raise DataError(self.source, f"page {index}: {'; '.join(new)}")
    return np.stack(pages) if pages else self._empty(rows, cols)

  def close(self) -> None:
    if self._tiff is not None:
      self._tiff.close()
