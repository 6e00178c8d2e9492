"""Neuron label readers; all return one internal form: binary masks [N, H, W] bool.

Formats:
  * YOLO segment text (`class x1 y1 x2 y2 ...`, vertices normalised by W / H).
  * STNeuroNet / SUNS `FinalMasks` .mat (MATLAB v7.3 = HDF5, or older MATLAB).
  * Instance-label images (TIFF / PNG [H, W] integers, 0 = background).
  * Neurofinder `regions.json` ([{"coordinates": [[row, col], ...]}, ...]).
`load_masks(path, image_hw)` dispatches on the suffix via `MASK_READERS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import scipy.io
from skimage.draw import polygon as fill_polygon

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.image_files import read_image_file
from neuroseg_jax.data.movies import open_movie
from neuroseg_jax.data.stack_base import require_file
from neuroseg_jax.registry import Registry, UnknownNameError

MASK_READERS: Registry[Callable[..., np.ndarray]] = Registry("label format")
# Normalised YOLO coordinates may exceed [0, 1] by float rounding only.
_COORD_TOLERANCE = 1e-6


def check_masks(source, masks: np.ndarray, image_hw=None) -> np.ndarray:
  """Validates a mask stack [N, H, W]; returns it as bool.

  Raises a DataError if it is not 3-D, has no instances, has an empty instance,
  or does not match `image_hw` (labels outside the image).
  """
  if masks.ndim != 3:
    raise DataError(source, f"expected masks [N, H, W], got shape {masks.shape}")
  if masks.shape[0] == 0 or masks.size == 0:
    raise DataError(source, f"no labeled instances (shape {masks.shape})")
  if image_hw is not None and tuple(masks.shape[1:]) != tuple(image_hw):
    raise DataError(source, f"labels are {masks.shape[1]}x{masks.shape[2]} but the image is "
                    f"{image_hw[0]}x{image_hw[1]} (labels outside the image)")
  masks = masks.astype(bool, copy=False)
  empty = np.flatnonzero(~masks.any(axis=(1, 2)))
  if empty.size:
    raise DataError(source, f"instance {int(empty[0])} has an empty mask")
  return masks


# ----------------------------------------------------------------- YOLO segments


def parse_yolo_segments(path) -> list[tuple[int, np.ndarray]]:
  """Reads a YOLO segment file -> [(class, vertices [K, 2] (x, y) in [0, 1])].

  Raises a DataError naming the file and the line for: a token that is not a
  finite number, a class that is not a non-negative integer, an odd number of
  coordinates, fewer than 3 vertices, a vertex outside [0, 1] (beyond rounding);
  and for a file without any polygon.
  """
  path = require_file(path)
  polygons = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      values = np.array([float(f) for f in fields])
    except ValueError as e:
      raise DataError(path, f"line {number}: not a list of numbers ({e})") from e
    if not np.isfinite(values).all():
      raise DataError(path, f"line {number}: not a list of finite numbers "
                      f"({fields[int(np.argmin(np.isfinite(values)))]!r})")
    label, coords = values[0], values[1:]
    if label != int(label) or label < 0:
      raise DataError(path, f"line {number}: class {fields[0]!r} is not a non-negative integer")
    if len(coords) % 2 or len(coords) < 6:
      raise DataError(path, f"line {number}: expected 'class x1 y1 x2 y2 x3 y3 ...' "
                      f"(>= 3 vertices, x and y each), got {len(coords)} coordinates")
    if coords.min() < -_COORD_TOLERANCE or coords.max() > 1 + _COORD_TOLERANCE:
      raise DataError(path, f"line {number}: vertex outside the image (normalised coordinates "
                      f"must lie in [0, 1], got {coords.min():.4g}..{coords.max():.4g})")
    polygons.append((int(label), np.clip(coords, 0, 1).reshape(-1, 2)))
  if not polygons:
    raise DataError(path, "empty label file (no polygons)")
  return polygons


def polygon_to_mask(vertices: np.ndarray, image_hw) -> np.ndarray:
  """Rasterises normalised (x, y) vertices [K, 2] -> mask [H, W] bool.

  Vertex (x, y) sits at column x * W, row y * H in pixel-index units (pixel
  (r, c) has its centre at (r, c)), the convention of contours traced through
  boundary-pixel centres. A pixel is set when its centre lies inside or on the
  polygon; vertex pixels are always set so tiny polygons keep their pixels.
  Checked on abo275 501484643: the polygons then reproduce the STNeuroNet
  FinalMasks exactly (median matched IoU 1.0).
  """
  height, width = image_hw
  rows, cols = vertices[:, 1] * height, vertices[:, 0] * width
  mask = np.zeros((height, width), bool)
  mask[fill_polygon(rows, cols, (height, width))] = True
  mask[np.clip(np.round(rows).astype(int), 0, height - 1),
       np.clip(np.round(cols).astype(int), 0, width - 1)] = True
  return mask


@MASK_READERS.register(".txt")
def read_yolo_masks(path, image_hw) -> np.ndarray:
  """YOLO segment file + image size (H, W) -> masks [N, H, W] bool (all classes)."""
  return np.stack([polygon_to_mask(v, image_hw) for _, v in parse_yolo_segments(path)])


# ---------------------------------------------------------- STNeuroNet FinalMasks


def _binarize(path: Path, values: np.ndarray) -> np.ndarray:
  """Mask values (any numeric dtype) -> bool (> 0); NaN/inf is a DataError."""
  if values.dtype.kind not in "buif":
    raise DataError(path, f"unsupported mask dtype {values.dtype}")
  if values.dtype.kind == "f" and not np.isfinite(values).all():
    raise DataError(path, "non-finite values (NaN or inf) in masks")
  return values > 0


def _read_mat_masks(path: Path, key: str) -> np.ndarray:
  """A MATLAB mask variable -> bool array in NumPy index order matching the images.

  MATLAB stores column-major, so h5py (v7.3 files) sees the axes reversed and
  scipy.io.loadmat (older files) sees them as MATLAB does. STNeuroNet/SUNS
  masks read through h5py are (N, H, W) as they stand (checked against the abo275
  images and YOLO labels); loadmat therefore needs the (2, 1, 0) transpose.
  v7.3 files are read in slabs of rows so no float64 copy of the whole stack is
  ever held.
  """
  if h5py.is_hdf5(path):
    with h5py.File(path, "r") as f:
      if key not in f:
        raise DataError(path, f"no variable {key!r} (found: {', '.join(f.keys()) or 'nothing'})")
      data = f[key]
      if data.ndim != 3 or data.shape[1] == 0:
        return _binarize(path, np.asarray(data))
      step = data.chunks[1] if data.chunks else 32
      return np.concatenate([_binarize(path, data[:, r:r + step])
                             for r in range(0, data.shape[1], step)], axis=1)
  try:
    contents = scipy.io.loadmat(path)
  except Exception as e:  # loadmat raises ValueError/TypeError/MatReadError on junk.
    raise DataError(path, f"not a readable MATLAB file ({e})") from e
  if key not in contents:
    found = ", ".join(k for k in contents if not k.startswith("__"))
    raise DataError(path, f"no variable {key!r} (found: {found or 'nothing'})")
  return _binarize(path, np.asarray(contents[key]).T)


@MASK_READERS.register(".mat")
def read_final_masks(path, image_hw=None, key: str = "FinalMasks") -> np.ndarray:
  """STNeuroNet / SUNS `FinalMasks` .mat -> masks [N, H, W] bool (values > 0).

  A single-cell file (MATLAB drops the trailing singleton axis) gives N = 1.
  """
  path = require_file(path)
  masks = _read_mat_masks(path, key)
  return check_masks(path, masks[None] if masks.ndim == 2 else masks, image_hw)


# -------------------------------------------------------- instance-label images


def instance_image_to_masks(labels: np.ndarray) -> np.ndarray:
  """Instance-label image [H, W] (0 = background) -> masks [N, H, W] bool,
  ordered by increasing label id (ids need not be consecutive)."""
  ids = np.unique(labels)
  ids = ids[ids != 0]
  return labels[None] == ids[:, None, None]


@MASK_READERS.register(".tif")
@MASK_READERS.register(".tiff")
@MASK_READERS.register(".png")
def read_instance_image(path, image_hw=None) -> np.ndarray:
  """Instance-label image file [H, W] (0 = background) -> masks [N, H, W] bool."""
  path = require_file(path)
  labels = read_image_file(path)
  if labels.ndim != 2:
    raise DataError(path, f"expected a 2-D instance-label image [H, W], got shape {labels.shape}")
  if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
    raise DataError(path, f"unsupported dtype {labels.dtype} with non-integer labels")
  if labels.dtype.kind not in "uif":
    raise DataError(path, f"unsupported dtype {labels.dtype} for instance labels")
  if labels.min() < 0:
    raise DataError(path, f"negative label {labels.min()}")
  return check_masks(path, instance_image_to_masks(labels), image_hw)


# ------------------------------------------------------------------ Neurofinder


@MASK_READERS.register(".json")
def read_neurofinder_regions(path, image_hw) -> np.ndarray:
  """Neurofinder regions.json [{"coordinates": [[row, col], ...]}, ...] -> masks
  [N, H, W] bool. Coordinates outside the image are a DataError."""
  path = require_file(path)
  try:
    regions = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(path, f"not valid JSON ({e})") from e
  if not isinstance(regions, list) or not regions:
    raise DataError(path, "expected a non-empty list of regions")
  height, width = image_hw
  masks = np.zeros((len(regions), height, width), bool)
  for i, region in enumerate(regions):
    try:
      coords = np.asarray(region["coordinates"], dtype=np.int64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(path, f"region {i}: expected 'coordinates' [[row, col], ...] ({e})") from e
    if coords.size == 0:
      raise DataError(path, f"region {i} has no coordinates")
    if (coords < 0).any() or (coords[:, 0] >= height).any() or (coords[:, 1] >= width).any():
      raise DataError(path, f"region {i}: coordinates outside the {height}x{width} image")
    masks[i, coords[:, 0], coords[:, 1]] = True
  return masks


def read_neurofinder(folder):
  """Neurofinder dataset folder -> (movie [T, H, W] lazy Movie, masks [N, H, W]).

  Layout: `images/*.tiff` (one frame per file) and `regions/regions.json`.
  """
  folder = Path(folder)
  movie = open_movie(folder / "images")
  masks = read_neurofinder_regions(folder / "regions" / "regions.json", movie.shape[1:])
  return movie, masks


def load_masks(path, image_hw=None, **reader_args) -> np.ndarray:
  """Reads any supported label file -> masks [N, H, W] bool (reader by suffix).

  `image_hw` is required for YOLO and Neurofinder files (their coordinates need
  the image size) and checked against the others.
  """
  path = Path(path)
  try:
    reader = MASK_READERS.get(path.suffix.lower())
  except UnknownNameError as e:
    raise DataError(path, str(e)) from e
  if image_hw is None and path.suffix.lower() in (".txt", ".json"):
    raise DataError(path, "this label format needs the image size (image_hw)")
  return reader(path, image_hw=image_hw, **reader_args)
