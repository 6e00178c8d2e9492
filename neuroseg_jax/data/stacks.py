"""Lazy readers of image stacks [N, H, W] on disk, indexed by the first axis.

One reader per layout, shared by two-photon movies (N = T frames, data/movies.py)
and EM volumes (N = D z-slices, data/em_volumes.py):
  * multipage TIFF: memory-mapped when the pixel data are one uncompressed block,
    otherwise read page by page (only the pages asked for);
  * a folder of numbered 2-D image files, one per index (PNG / TIFF);
  * an HDF5 dataset, sliced by h5py;
  * a zarr array inside a `.zarr` store (chunked volumes as connectomics tools write
    them), sliced by zarr.
`stack.read(start, stop, rows, cols)` reads items start..stop-1, cropped in-plane,
as a new native-dtype array [stop - start, h, w]; nothing else is held in memory,
so a 1000 x 4096 x 4096 volume or a 23,000-frame movie is read piece by piece.
Readers keep their file open (close() releases it) and may be read from several
threads at once.

Every problem is a DataError naming the file: a missing or unreadable file, a
stack that is not 3-D, a folder whose numbering has a gap or whose images differ
in size, a truncated TIFF. A TIFF is truncated when it ends before the data that
its header promises: fewer pages (or, for one contiguous block, fewer bytes) than
the frame count of its ImageJ or tifffile "shaped" metadata, a page whose data
run past the end of the file, or a broken page chain (tifffile only logs these, in
a line that does not name the file; every warning it logs while opening or reading
becomes a DataError here). `allow_truncated=True` reads the complete leading
frames instead and warns how many of the promised frames that is.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import mmap
import re
import struct
import threading
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import h5py
import numpy as np
import tifffile

from neuroseg_jax.data import image_files
from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry, UnknownNameError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # zarr v3 / v2 metadata files.
SLICE_SUFFIXES = (".png", *image_files.TIFF_SUFFIXES)
_ALL = slice(None)


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
  def read(self, start: int, stop: int, rows: slice = _ALL, cols: slice = _ALL) -> np.ndarray:
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


# ---------------------------------------------------------------- multipage TIFF


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

  def read(self, start, stop, rows=_ALL, cols=_ALL):
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


# ---------------------------------------------------------------- slice folders


def numbered_files(folder, pattern: str = "*") -> dict[int, Path]:
  """{number: file} of the PNG / TIFF files in `folder` matching `pattern`, all named
  <prefix><number><suffix> with one prefix and suffix (e.g. im0000.png ... im0999.png).

  Raises a DataError for a missing folder, no such files, files that are not one
  numbered series, or a number given twice (im1.png and im01.png).
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(folder, "folder not found")
  files = sorted(f for f in folder.glob(pattern) if f.suffix.lower() in SLICE_SUFFIXES)
  if not files:
    raise DataError(folder, f"no image files ({', '.join(SLICE_SUFFIXES)}) matching {pattern!r}")
  found, series = {}, set()
  for path in files:
    match = re.fullmatch(r"(.*?)(\d+)(\.\w+)", path.name)
    if match is None:
      raise DataError(path, "file name has no slice number (expected <prefix><number><suffix>)")
    series.add((match.group(1), match.group(3).lower()))
    if len(series) > 1:
      raise DataError(path, f"file name does not follow {files[0].name}: the folder must hold one "
                      "numbered series <prefix><number><suffix>")
    number = int(match.group(2))
    if number in found:
      raise DataError(path, f"slice number {number} appears twice (also {found[number].name})")
    found[number] = path
  return found


def consecutive_files(numbered: dict[int, Path]) -> list[Path]:
  """The files of `numbered_files` in numeric order; a DataError naming the file after
  a gap in the numbering (0, 1, 3: slice 2 is missing)."""
  numbers = sorted(numbered)
  for previous, number in zip(numbers, numbers[1:]):
    if number != previous + 1:
      raise DataError(numbered[number], f"slice number {number} follows {previous}: "
                      f"slice {previous + 1} is missing")
  return [numbered[n] for n in numbers]


class SliceFolderStack(Stack):
  """One 2-D image file per index, `files` in index order; each file decoded when read.

  Every file's size is checked against the first one's from the headers when the
  stack is opened, so mismatched slices fail at once, not halfway through training.
  """

  def __init__(self, files: Sequence, source: str):
    self.files = [Path(f) for f in files]
    self.source = str(source)
    if not self.files:
      raise DataError(source, "no slice files")
    first = image_files.read_image_file(self.files[0])
    if first.ndim != 2:
      raise DataError(self.files[0], f"expected a 2-D grayscale image, got shape {first.shape}")
    for path in self.files[1:]:
      shape = image_files.image_shape(path)
      if shape != first.shape:
        raise DataError(path, f"image is {shape}, but the first slice {self.files[0].name} "
                        f"is {first.shape}")
    self.shape = (len(self.files), *first.shape)
    self.dtype = check_stack(self.source, self.shape, first.dtype)

  @classmethod
  def from_folder(cls, folder, pattern: str = "*") -> "SliceFolderStack":
    """The numbered PNG / TIFF files of `folder` (see `numbered_files`), without gaps."""
    return cls(consecutive_files(numbered_files(folder, pattern)), str(folder))

  def read(self, start, stop, rows=_ALL, cols=_ALL):
    slices = []
    for path in self.files[start:stop]:
      image = image_files.read_image_file(path)
      if image.shape != self.shape[1:] or image.dtype != self.dtype:
        raise DataError(path, f"image is {image.shape} {image.dtype}, but the first slice is "
                        f"{self.shape[1:]} {self.dtype}")
      slices.append(image[rows, cols])
    return np.stack(slices) if slices else self._empty(rows, cols)


# ---------------------------------------------------------------- HDF5


class Hdf5Stack(Stack):
  """A 3-D dataset of an HDF5 file; `key` may be omitted when the file holds one dataset.

  `source` is "file:key". h5py serialises access, so threads may share the open file.
  """

  def __init__(self, path, key: str | None = None):
    path = require_file(path)
    try:
      self._file = h5py.File(path, "r")
    except Exception as e:  # h5py raises OSError and others for non-HDF5 or cut files.
      raise DataError(path, f"not a readable HDF5 file ({e})") from e
    datasets = []
    self._file.visititems(lambda name, obj: datasets.append(name)
                          if isinstance(obj, h5py.Dataset) else None)
    found = ", ".join(datasets) or "nothing"
    if key is None and len(datasets) != 1:
      self._file.close()
      raise DataError(path, f"give a dataset key (found: {found})")
    key = datasets[0] if key is None else key
    if key not in datasets:
      self._file.close()
      raise DataError(path, f"no dataset {key!r} (found: {found})")
    self._data = self._file[key]
    self.source = f"{path}:{key}"
    self.shape = tuple(self._data.shape)
    try:
      self.dtype = check_stack(self.source, self.shape, self._data.dtype)
    except DataError:
      self._file.close()
      raise

  def read(self, start, stop, rows=_ALL, cols=_ALL):
    try:
      return self._data[start:stop, rows, cols]
    except OSError as e:  # a damaged chunk or a file cut short.
      raise DataError(self.source, f"cannot read items {start}..{stop - 1} ({e})") from e

  def attributes(self) -> list[dict]:
    return [dict(self._data.attrs), dict(self._data.parent.attrs)]

  def close(self) -> None:
    self._file.close()


def is_zarr(path: Path) -> bool:
  """A `.zarr` path, or a folder holding zarr metadata."""
  return path.suffix.lower() == ZARR_SUFFIX or (
      path.is_dir() and any((path / marker).exists() for marker in ZARR_MARKERS))


# ---------------------------------------------------------------- dispatch

STACK_READERS: Registry[Callable[..., Stack]] = Registry("stack format")
STACK_READERS.register("directory")(SliceFolderStack.from_folder)
for _suffix in image_files.TIFF_SUFFIXES:
  STACK_READERS.register(_suffix)(TiffStack)
for _suffix in HDF5_SUFFIXES:
  STACK_READERS.register(_suffix)(Hdf5Stack)



@STACK_READERS.register(ZARR_SUFFIX)
def _zarr_stack(path, **reader_args) -> Stack:
  from neuroseg_jax.data import zarr_stack  # zarr loads only for zarr stores (~0.4 s)
  return zarr_stack.ZarrStack(path, **reader_args)


def open_stack(path, **reader_args) -> Stack:
  """The stack at `path` by the reader registered for its suffix (".zarr" also for a
  folder holding zarr metadata; "directory" for other folders).

  `reader_args` go to that reader: `key` (HDF5 dataset, zarr array path),
  `allow_truncated` (TIFF), `pattern` (folder glob).
  """
  path = Path(path)
  if not path.exists():
    raise DataError(path, "file not found")
  if is_zarr(path):
    name = ZARR_SUFFIX
  else:
    name = "directory" if path.is_dir() else path.suffix.lower()
  try:
    reader = STACK_READERS.get(name)
  except UnknownNameError as e:
    raise DataError(path, str(e)) from e
  return reader(path, **reader_args)
