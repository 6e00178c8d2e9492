"""Serial-EM volumes [D, H, W] (z-y-x) read lazily, and the SNEMI3D / MitoEM layouts.

A volume object knows its `shape` and `dtype` and reads only what an index asks
for: `volume[z0:z1, y0:y1, x0:x1]` -> np.ndarray [z1-z0, y1-y0, x1-x0] (integer
indices drop their axis, like NumPy). Files are read by the shared stack readers
(data/stacks.py: TIFF stacks memory-mapped or page by page, slice folders one file
per z, HDF5 and zarr sliced by h5py / zarr), so a 1000 x 4096 x 4096 volume is never
held in memory, only the slices a crop touches. Views (a z-range, binning, a low-pass
filter, several volumes stacked along z) are volumes too and read lazily from the
volumes they wrap. `read_voxel_size` gives the (z, y, x) voxel size in nm when the
file records it.

Layouts:
  SNEMI3D  root/train-input.tif, root/train-labels.tif (multipage TIFF, z-y-x).
  MitoEM   root/im/im0000.png ... (one uint8 slice per z) and label slices
           root/mito-train-v2/seg0000.tif ... (or an HDF5 / TIFF label stack).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import tifffile
from scipy import ndimage

from neuroseg_jax.data import image_files, stack_base, stacks
from neuroseg_jax.data.intensity import sample_slices
from neuroseg_jax.errors import DataError

MITOEM_LABEL_DIRS = {"train": "mito-train-v2", "val": "mito-val-v2"}
MITOEM_SLICES = {"train": range(0, 400), "val": range(400, 500), "test": range(500, 1000)}
VOXEL_SIZE_ATTRIBUTES = ("resolution", "voxel_size")  # (z, y, x) in nm, as CREMI stores it.
NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "micron": 1e3, "microns": 1e3,
               "\u00b5m": 1e3, "\\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6}


class LazyVolume(abc.ABC):
  """A [D, H, W] volume on disk; subclasses set `name`, `shape`, `dtype` and implement `_read`."""
  name: str
  shape: tuple[int, int, int]
  dtype: np.dtype
  ndim = 3

  @abc.abstractmethod
  def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
    """Normalised step-1 slices -> [dz, dy, dx] array."""

  def __getitem__(self, key) -> np.ndarray:
    key = key if isinstance(key, tuple) else (key,)
    if len(key) > 3:
      raise IndexError(f"{self.name}: too many indices {key} for a 3-D volume")
    key = key + (slice(None),) * (3 - len(key))
    slices, squeeze = [], []
    for axis, (k, size) in enumerate(zip(key, self.shape)):
      if isinstance(k, slice):
        start, stop, step = k.indices(size)
        if step != 1:
          raise IndexError(f"{self.name}: only step-1 slices are supported, got {k}")
        slices.append(slice(start, max(start, stop)))
      else:
        index = int(k) + size if int(k) < 0 else int(k)
        if not 0 <= index < size:
          raise IndexError(f"{self.name}: index {k} out of range for axis {axis} of size {size}")
        slices.append(slice(index, index + 1))
        squeeze.append(axis)
    return self._read(*slices).squeeze(axis=tuple(squeeze))

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class StackVolume(LazyVolume):
  """A `stack_base.Stack` [D, H, W] (TIFF stack, slice folder, HDF5 dataset) as a volume.

  With `check_constant`, a volume whose `sample_slices` hold one value is a
  DataError (an image volume that says nothing; labels may legitimately be empty).
  """

  def __init__(self, stack: stack_base.Stack, check_constant: bool = True):
    self.stack = stack
    self.name, self.shape, self.dtype = stack.source, stack.shape, stack.dtype
    if check_constant:
      sample = sample_slices(self)
      if sample.min() == sample.max():
        raise DataError(self.name, f"constant volume: sampled slices all equal {sample.flat[0]}")

  def _read(self, zs, ys, xs):
    return self.stack.read(zs.start, zs.stop, ys, xs)


class AxisRange(LazyVolume):
  """Indices [start, stop) along one axis (0 = z, 1 = y, 2 = x) of a [D, H, W] volume
  (array or LazyVolume), as a volume of that extent along the axis: a held-out slab."""

  def __init__(self, volume, start: int, stop: int, axis: int = 0):
    name = getattr(volume, "name", "volume")
    axis_name, size = "zyx"[axis], volume.shape[axis]
    if not 0 <= start < stop <= size:
      raise DataError(name, f"{axis_name} range [{start}, {stop}) is not inside [0, {size})")
    self.volume, self.start, self.axis = volume, start, axis
    self.name = f"{name}[{axis_name} {start}:{stop}]"
    shape = list(volume.shape)
    shape[axis] = stop - start
    self.shape = tuple(shape)
    self.dtype = np.dtype(volume.dtype)

  def _read(self, zs, ys, xs):
    window = [zs, ys, xs]
    window[self.axis] = slice(self.start + window[self.axis].start,
                              self.start + window[self.axis].stop)
    return np.asarray(self.volume[tuple(window)])


class BinnedVolume(LazyVolume):
  """[D, H, W] volume (array or LazyVolume) mean-pooled by integer factors (bz, by, bx).

  Reads lazily: voxel (z, y, x) of the binned [D // bz, H // by, W // bx] volume is
  the mean of the source block [z*bz:(z+1)*bz, y*by:(y+1)*by, x*bx:(x+1)*bx] (a
  trailing partial block is dropped). Binning is how noisy cryo-ET tomograms are
  usually looked at; it lowers white noise by sqrt(bz * by * bx).
  """

  def __init__(self, volume, factors: Sequence[int]):
    name = getattr(volume, "name", "volume")
    factors = tuple(int(f) for f in factors)
    if len(factors) != 3 or min(factors) < 1:
      raise DataError(name, f"bin factors must be three positive integers, got {factors}")
    shape = tuple(s // f for s, f in zip(volume.shape, factors))
    if min(shape) == 0:
      raise DataError(name, f"volume of shape {tuple(volume.shape)} is smaller than one bin "
                      f"{factors}")
    self.volume, self.factors, self.shape = volume, factors, shape
    self.name = f"{name}[bin {'x'.join(map(str, factors))}]"
    self.dtype = np.dtype(np.float32)

  def _read(self, zs, ys, xs):
    window = tuple(slice(s.start * f, s.stop * f) for s, f in zip((zs, ys, xs), self.factors))
    block = np.asarray(self.volume[window], np.float32)
    split = [n for size, f in zip(block.shape, self.factors) for n in (size // f, f)]
    return block.reshape(split).mean(axis=(1, 3, 5))


class GaussianFilteredVolume(LazyVolume):
  """[D, H, W] volume (array or LazyVolume) low-pass filtered by a Gaussian of per-axis
  standard deviations (sz, sy, sx) in voxels.

  Reads lazily and exactly: a requested block is read with a margin of the kernel
  radius (`round(4 * sigma)`, scipy's default truncation) on each side, filtered with
  mirror ("reflect") boundaries, and the margin cut off, so every voxel equals
  `ndimage.gaussian_filter(whole_volume, sigma, mode="reflect")` at that voxel. Low-pass
  filtering is the usual first step with noisy cryo-ET tomograms: it keeps structures
  wider than a few sigma and removes most of the per-voxel noise.
  """

  def __init__(self, volume, sigma: Sequence[float]):
    name = getattr(volume, "name", "volume")
    sigma = tuple(float(s) for s in sigma)
    if len(sigma) != 3 or min(sigma) < 0 or max(sigma) == 0:
      raise DataError(name, f"low-pass sigma must be three non-negative numbers, not all 0, "
                      f"got {sigma}")
    self.volume, self.sigma, self.shape = volume, sigma, tuple(volume.shape)
    self.margins = tuple(int(4.0 * s + 0.5) for s in sigma)
    self.name = f"{name}[gaussian {'x'.join(f'{s:g}' for s in sigma)}]"
    self.dtype = np.dtype(np.float32)

  def _read(self, zs, ys, xs):
    outer = [slice(max(0, s.start - m), min(size, s.stop + m))
             for s, m, size in zip((zs, ys, xs), self.margins, self.shape)]
    block = np.asarray(self.volume[tuple(outer)], np.float32)
    filtered = ndimage.gaussian_filter(block, self.sigma, mode="reflect")
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip((zs, ys, xs), outer))
    return filtered[inner]


class ConcatenatedVolume(LazyVolume):
  """[D1 + D2 + ..., H, W]: volumes (arrays or LazyVolumes) of one in-plane size [Di, H, W]
  stacked along z in the order given; a read spanning a boundary reads each part's
  share. The dtype is the one all parts' dtypes promote to."""

  def __init__(self, volumes: Sequence):
    if not volumes:
      raise DataError("volumes", "nothing to concatenate")
    self.volumes = list(volumes)
    names = [getattr(v, "name", f"volume {i}") for i, v in enumerate(self.volumes)]
    for name, volume in zip(names[1:], self.volumes[1:]):
      if tuple(volume.shape[1:]) != tuple(self.volumes[0].shape[1:]):
        raise DataError(name, f"in-plane shape {tuple(volume.shape[1:])} differs from "
                        f"{tuple(self.volumes[0].shape[1:])} of {names[0]}: cannot stack along z")
    self.starts = np.cumsum([0] + [v.shape[0] for v in self.volumes])
    self.name = " + ".join(names)
    self.shape = (int(self.starts[-1]), *self.volumes[0].shape[1:])
    self.dtype = np.result_type(*(v.dtype for v in self.volumes))

  def _read(self, zs, ys, xs):
    parts = [np.asarray(volume[max(zs.start - start, 0):min(zs.stop - start, len(volume)), ys, xs],
                        self.dtype)
             for volume, start in zip(self.volumes, self.starts)
             if start < zs.stop and zs.start < start + len(volume)]
    if not parts:
      return np.asarray(self.volumes[0][0:0, ys, xs], self.dtype)
    return np.concatenate(parts)


def read_voxel_size(path, key: str | None = None) -> tuple[float, float, float] | None:
  """(z, y, x) voxel size in nm as the file records it, else None.

  HDF5 / zarr: the attribute "resolution" or "voxel_size" (three numbers, z-y-x, in
  nm) of the dataset, else of its parent group. ImageJ TIFF: "spacing" (z) and the
  XResolution / YResolution tags (pixels per unit) with unit nm, um or micron.
  """
  path = Path(path)
  if path.suffix.lower() in image_files.TIFF_SUFFIXES:
    return _imagej_voxel_size(stack_base.require_file(path))
  if path.suffix.lower() not in stacks.HDF5_SUFFIXES and not stacks.is_zarr(path):
    return None
  stack = stacks.open_stack(path, **({"key": key} if key else {}))
  try:
    for attrs in stack.attributes():
      for name in VOXEL_SIZE_ATTRIBUTES:
        if name in attrs:
          size = tuple(float(v) for v in np.ravel(attrs[name]))
          if len(size) != 3 or min(size) <= 0:
            raise DataError(stack.source, f"attribute {name!r} = {attrs[name]!r} is not three "
                            "positive numbers (z, y, x in nm)")
          return size
    return None
  finally:
    stack.close()


def _imagej_voxel_size(path: Path) -> tuple[float, float, float] | None:
  try:
    tiff = tifffile.TiffFile(path)
  except Exception as e:  # tifffile raises several types for unreadable files.
    raise DataError(path, f"not a readable TIFF file ({e})") from e
  with tiff:
    meta, tags = tiff.imagej_metadata or {}, tiff.pages[0].tags
    scale = NM_PER_UNIT.get(str(meta.get("unit", "")).lower())
    if scale is None or "spacing" not in meta or "YResolution" not in tags:
      return None
    (y_num, y_den), (x_num, x_den) = tags["YResolution"].value, tags["XResolution"].value
  if not (y_num and x_num):
    return None
  return (float(meta["spacing"]) * scale, y_den / y_num * scale, x_den / x_num * scale)


def open_volume(path, key: str | None = None, check_constant: bool = True,
                **reader_args) -> StackVolume:
  """A lazy volume from a TIFF stack, an HDF5 file (+ dataset `key`, optional when it
  holds one dataset) or a folder of numbered slices; `reader_args` go to the reader
  (`allow_truncated` for TIFF)."""
  if key:
    reader_args["key"] = key
  return StackVolume(stacks.open_stack(path, **reader_args), check_constant)


class LabeledVolume(NamedTuple):
  raw: LazyVolume                 # [D, H, W] image volume.
  labels: LazyVolume | None       # [D, H, W] instance labels aligned with raw, or None.


def check_aligned(raw: LazyVolume, labels: LazyVolume) -> None:
  """DataError naming the labels unless they have the raw volume's shape."""
  if raw.shape != labels.shape:
    raise DataError(labels.name, f"label shape {labels.shape} differs from raw shape {raw.shape}")


def open_snemi3d(root, split: str = "train") -> LabeledVolume:
  """root/{split}-input.tif and, when present, root/{split}-labels.tif (z-y-x multipage TIFFs)."""
  root = Path(root)
  raw = open_volume(root / f"{split}-input.tif")
  label_path = root / f"{split}-labels.tif"
  if not label_path.exists():
    return LabeledVolume(raw, None)
  labels = open_volume(label_path, check_constant=False)
  check_aligned(raw, labels)
  return LabeledVolume(raw, labels)


def open_mitoem(root, split: str = "train", labels_path=None, labels_key: str | None = None
                ) -> LabeledVolume:
  """MitoEM layout: raw slices root/im/imNNNN.png aligned with the split's labels.

  Labels come from `labels_path` (a TIFF/HDF5 stack or slice folder whose z = 0
  is the split's first slice: 0 train, 400 val, 500 test), else from the folder
  root/mito-{train,val}-v2/segNNNN.tif (aligned by number). Without either (the
  test split), raw holds the split's slices that exist and labels are None.
  """
  if split not in MITOEM_SLICES:
    raise DataError(root, f"unknown MitoEM split {split!r}; expected one of {list(MITOEM_SLICES)}")
  root = Path(root)
  images = stacks.numbered_files(root / "im", "im*.png")
  label_dir = root / MITOEM_LABEL_DIRS[split] if split in MITOEM_LABEL_DIRS else None
  if labels_path is not None:
    labels = open_volume(labels_path, labels_key, check_constant=False)
    indices = [MITOEM_SLICES[split].start + z for z in range(labels.shape[0])]
  elif label_dir is not None and label_dir.is_dir():
    label_files = stacks.numbered_files(label_dir, "seg*")
    indices = sorted(label_files)
    labels = StackVolume(stacks.SliceFolderStack(stacks.consecutive_files(label_files),
                                                 str(label_dir)), check_constant=False)
  else:
    indices, labels = [i for i in MITOEM_SLICES[split] if i in images], None
  missing = [i for i in indices if i not in images]
  if missing or not indices:
    raise DataError(root / "im", f"missing raw slices {missing[:5] or 'for split ' + split}")
  raw = StackVolume(stacks.SliceFolderStack([images[i] for i in indices], str(root / "im")))
  if labels is not None:
    check_aligned(raw, labels)
  return LabeledVolume(raw, labels)
