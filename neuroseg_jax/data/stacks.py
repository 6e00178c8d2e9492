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
in size, a truncated TIFF (`data/tiff_stack.py` says when a TIFF is truncated).
The `Stack` interface and the shared checks live in `data/stack_base.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from neuroseg_jax.data import image_files
from neuroseg_jax.data.stack_base import ALL, Stack, check_stack, require_file
from neuroseg_jax.data.tiff_stack import TiffStack
from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry, UnknownNameError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # zarr v3 / v2 metadata files.
SLICE_SUFFIXES = (".png", *image_files.TIFF_SUFFIXES)


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

  def read(self, start, stop, rows=ALL, cols=ALL):
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

  def read(self, start, stop, rows=ALL, cols=ALL):
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
