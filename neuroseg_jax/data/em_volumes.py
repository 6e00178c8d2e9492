"""Lazy readers for serial-EM volumes [D, H, W] (z-y-x): TIFF stacks, PNG/TIFF slice folders, HDF5.

A volume object knows its `shape` and `dtype` and reads only what an index asks
for: `volume[z0:z1, y0:y1, x0:x1]` -> np.ndarray [z1-z0, y1-y0, x1-x0] (integer
indices drop their axis, like NumPy). Uncompressed TIFF stacks are memory-mapped;
compressed ones are read page by page (only pages z0..z1-1); slice folders decode
one file per z; HDF5 datasets are sliced by h5py. A 1000 x 4096 x 4096 volume is
therefore never held in memory, only the slices a crop touches.

Layouts:
  SNEMI3D  root/train-input.tif, root/train-labels.tif (multipage TIFF, z-y-x).
  MitoEM   root/im/im0000.png ... (one uint8 slice per z) and label slices
           root/mito-train-v2/seg0000.tif ... (or an HDF5 / TIFF label stack).
"""

from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import h5py
import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from neuroseg_jax.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
MITOEM_LABEL_DIRS = {"train": "mito-train-v2", "val": "mito-val-v2"}
MITOEM_SLICES = {"train": range(0, 400), "val": range(400, 500), "test": range(500, 1000)}


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

  def _check(self, check_constant: bool):
    """DataError for an empty volume or (if asked) a constant one, judged on `sample_slices`."""
    if min(self.shape) == 0:
      raise DataError(self.name, f"empty volume of shape {self.shape}")
    if check_constant:
      sample = sample_slices(self)
      if sample.min() == sample.max():
        raise DataError(self.name, f"constant volume: sampled slices all equal {sample.flat[0]}")


def sample_slices(volume, num_slices: int = 3) -> np.ndarray:
  """Up to `num_slices` evenly spaced full z-slices (first, middle, last) -> [k, H, W]."""
  zs = np.unique(np.linspace(0, volume.shape[0] - 1, num_slices).round().astype(int))
  return np.stack([volume[int(z)] for z in zs])


def intensity_range(volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
  """(low, high) intensity percentiles of `sample_slices(volume)`, for scaling crops to [0, 1]."""
  low, high = np.percentile(sample_slices(volume), percentiles)
  return float(low), float(high)


class IntensityStats(NamedTuple):
  low: float   # percentile intensities mapped to 0 and 1 ...
  high: float
  mean: float  # ... and the mean and standard deviation of the mapped, clipped sample.
  std: float


def intensity_stats(volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityStats:
  """`intensity_range` plus the mean / std of the sample scaled by it and clipped to [0, 1].

  Inputs standardised as ((clip((x - low) / (high - low), 0, 1)) - mean) / std have
  about zero mean and unit variance (MAE pre-training feeds its ViT that way).
  """
  low, high = intensity_range(volume, percentiles)
  scaled = np.clip((sample_slices(volume).astype(np.float64) - low) / max(high - low, 1e-12), 0, 1)
  return IntensityStats(low, high, float(scaled.mean()), max(float(scaled.std()), 1e-6))


def _require_file(path: Path):
  if not path.exists():
    raise DataError(path, "file not found")


class TiffStackVolume(LazyVolume):
  """Multipage TIFF z-stack: one 2-D page per z (SNEMI3D layout, generic stacks)."""

  def __init__(self, path, check_constant: bool = True):
    self.path = Path(path)
    self.name = str(self.path)
    _require_file(self.path)
    try:
      with tifffile.TiffFile(self.path) as tif:
        series = tif.series
        num_pages = len(tif.pages)
        if len(series) == 1 and len(series[0].shape) == 3 and series[0].axes.endswith("YX"):
          self.shape, self.dtype = tuple(series[0].shape), np.dtype(series[0].dtype)
          self._memmappable = series[0].dataoffset is not None
        elif len(series) > 1 and all(s.shape == series[0].shape and len(s.shape) == 2
                                     for s in series):
          self.shape = (len(series), *series[0].shape)
          self.dtype, self._memmappable = np.dtype(series[0].dtype), False
        else:
          shapes = [tuple(s.shape) for s in series[:4]]
          raise DataError(self.path, f"expected a 3-D z-y-x stack of 2-D grayscale pages, "
                          f"got image series of shape(s) {shapes}")
    except DataError:
      raise
    except Exception as err:  # tifffile raises many types for non-TIFF / corrupt files.
      raise DataError(self.path, f"cannot read as TIFF ({err})") from err
    if not self._memmappable and num_pages != self.shape[0]:
      raise DataError(self.path, f"{num_pages} page(s) for {self.shape[0]} z-slices (compressed "
                      "planar samples?); cannot read lazily: store one page per z-slice")
    self._check(check_constant)

  def _read(self, zs, ys, xs):
    if self._memmappable:
      return np.array(tifffile.memmap(self.path, mode="r")[zs, ys, xs])
    with tifffile.TiffFile(self.path) as tif:
      slices = [tif.pages[z].asarray()[ys, xs] for z in range(zs.start, zs.stop)]
    return np.stack(slices) if slices else np.zeros((0, *_extent(ys, xs)), self.dtype)


def _extent(ys: slice, xs: slice) -> tuple[int, int]:
  return ys.stop - ys.start, xs.stop - xs.start


def read_slice_file(path: Path) -> np.ndarray:
  """One 2-D slice of a PNG or TIFF file -> [H, W]; DataError if missing, unreadable, not 2-D."""
  _require_file(path)
  try:
    if path.suffix.lower() in TIFF_SUFFIXES:
      image = tifffile.imread(path)
    else:
      with Image.open(path) as handle:
        image = np.asarray(handle)
  except Exception as err:  # PIL / tifffile raise many types for corrupt files.
    raise DataError(path, f"cannot read image ({err})") from err
  if image.ndim != 2:
    raise DataError(path, f"expected a 2-D grayscale slice, got shape {image.shape}")
  return image


class SliceFolderVolume(LazyVolume):
  """One 2-D PNG/TIFF file per z (MitoEM layout); `files` in z order."""

  def __init__(self, files: Sequence, name: str, check_constant: bool = True):
    self.files = [Path(f) for f in files]
    self.name = name
    if not self.files:
      raise DataError(name, "no slice files")
    first = read_slice_file(self.files[0])
    self.shape, self.dtype = (len(self.files), *first.shape), first.dtype
    self._check(check_constant)

  @classmethod
  def from_folder(cls, folder, pattern: str = "*", check_constant: bool = True):
    """All PNG/TIFF files in `folder` matching `pattern`, in natural (numeric) order."""
    folder = Path(folder)
    if not folder.is_dir():
      raise DataError(folder, "slice folder not found")
    files = [f for f in folder.glob(pattern) if f.suffix.lower() in (".png", *TIFF_SUFFIXES)]
    files.sort(key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)])
    if not files:
      raise DataError(folder, f"no PNG/TIFF slices matching {pattern!r}")
    return cls(files, str(folder), check_constant)

  def _read(self, zs, ys, xs):
    slices = []
    for path in self.files[zs]:
      image = read_slice_file(path)
      if image.shape != self.shape[1:]:
        raise DataError(path, f"slice shape {image.shape} differs from {self.shape[1:]} "
                        "of the first slice")
      slices.append(image[ys, xs])
    return np.stack(slices) if slices else np.zeros((0, *_extent(ys, xs)), self.dtype)


class Hdf5Volume(LazyVolume):
  """A 3-D dataset in an HDF5 file; `key` may be omitted when the file holds one dataset."""

  def __init__(self, path, key: str | None = None, check_constant: bool = True):
    self.path = Path(path)
    _require_file(self.path)
    try:
      with h5py.File(self.path, "r") as handle:
        datasets = []
        handle.visititems(
            lambda n, obj: datasets.append(n) if isinstance(obj, h5py.Dataset) else None)
        if key is None and len(datasets) != 1:
          raise DataError(self.path, f"give a dataset key; the file holds {datasets}")
        self.key = datasets[0] if key is None else key
        if self.key not in datasets:
          raise DataError(self.path, f"no dataset {self.key!r}; the file holds {datasets}")
        self.shape, self.dtype = tuple(handle[self.key].shape), np.dtype(handle[self.key].dtype)
    except DataError:
      raise
    except Exception as err:  # h5py raises OSError and others for non-HDF5 files.
      raise DataError(self.path, f"cannot read as HDF5 ({err})") from err
    self.name = f"{self.path}:{self.key}"
    if len(self.shape) != 3:
      raise DataError(self.name, f"expected a 3-D z-y-x dataset, got shape {self.shape}")
    self._check(check_constant)

  def _read(self, zs, ys, xs):
    with h5py.File(self.path, "r") as handle:
      return handle[self.key][zs, ys, xs]


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


def open_volume(path, key: str | None = None, check_constant: bool = True) -> LazyVolume:
  """A lazy volume from a TIFF stack, an HDF5 file (+ dataset key) or a folder of slices."""
  path = Path(path)
  if path.is_dir():
    return SliceFolderVolume.from_folder(path, check_constant=check_constant)
  suffix = path.suffix.lower()
  if suffix in TIFF_SUFFIXES:
    return TiffStackVolume(path, check_constant)
  if suffix in HDF5_SUFFIXES:
    return Hdf5Volume(path, key, check_constant)
  _require_file(path)
  raise DataError(path,
                  f"unsupported volume format {suffix!r}; expected TIFF, HDF5 or a slice folder")


class LabeledVolume(NamedTuple):
  raw: LazyVolume                 # [D, H, W] image volume.
  labels: LazyVolume | None       # [D, H, W] instance labels aligned with raw, or None.


def _check_aligned(raw: LazyVolume, labels: LazyVolume):
  if raw.shape != labels.shape:
    raise DataError(labels.name, f"label shape {labels.shape} differs from raw shape {raw.shape}")


def open_snemi3d(root, split: str = "train") -> LabeledVolume:
  """root/{split}-input.tif and, when present, root/{split}-labels.tif (z-y-x multipage TIFFs)."""
  root = Path(root)
  raw = TiffStackVolume(root / f"{split}-input.tif")
  label_path = root / f"{split}-labels.tif"
  if not label_path.exists():
    return LabeledVolume(raw, None)
  labels = TiffStackVolume(label_path, check_constant=False)
  _check_aligned(raw, labels)
  return LabeledVolume(raw, labels)


def _numbered_files(folder: Path, prefix: str, suffixes: Sequence[str]) -> dict[int, Path]:
  """{index: path} for files named <prefix><digits><suffix> in folder."""
  if not folder.is_dir():
    raise DataError(folder, "folder not found")
  pattern = re.compile(rf"{re.escape(prefix)}(\d+)({'|'.join(map(re.escape, suffixes))})$", re.I)
  found = {int(m.group(1)): f for f in folder.iterdir() if (m := pattern.match(f.name))}
  if not found:
    raise DataError(folder, f"no files named {prefix}<number>{suffixes[0]}")
  return found


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
  images = _numbered_files(root / "im", "im", (".png",))
  label_dir = root / MITOEM_LABEL_DIRS[split] if split in MITOEM_LABEL_DIRS else None
  if labels_path is not None:
    labels = open_volume(labels_path, labels_key, check_constant=False)
    indices = [MITOEM_SLICES[split].start + z for z in range(labels.shape[0])]
  elif label_dir is not None and label_dir.is_dir():
    label_files = _numbered_files(label_dir, "seg", TIFF_SUFFIXES)
    indices = sorted(label_files)
    labels = SliceFolderVolume([label_files[i] for i in indices], str(label_dir),
                               check_constant=False)
  else:
    indices, labels = [i for i in MITOEM_SLICES[split] if i in images], None
  missing = [i for i in indices if i not in images]
  if missing or not indices:
    raise DataError(root / "im", f"missing raw slices {missing[:5] or 'for split ' + split}")
  raw = SliceFolderVolume([images[i] for i in indices], str(root / "im"))
  if labels is not None:
    _check_aligned(raw, labels)
  return LabeledVolume(raw, labels)
