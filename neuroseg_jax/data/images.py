"""2-D summary images on disk (JPEG / PNG / TIFF) and the ABO/YOLO folder layout.

Layout (e.g. ../shared/data/abo275): `images/<id>.jpg` with `labels/<id>.txt`
(YOLO segment polygons). Images are grayscale; three identical channels are
collapsed to one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.image_files import read_image_file
from neuroseg_jax.data.labels import read_yolo_masks
from neuroseg_jax.data.movies import check_finite
from neuroseg_jax.data.stack_base import check_pixel_dtype, require_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def read_summary_image(path) -> np.ndarray:
  """Grayscale image file -> [H, W] float32 in the file's value range (0..255 for
  8-bit). Accepts [H, W], [H, W, 1] and [H, W, 3] with identical channels."""
  path = require_file(path)
  image = read_image_file(path)
  if image.ndim == 3 and image.shape[-1] in (1, 3):
    if not (image == image[..., :1]).all():
      raise DataError(path, "colour image: channels differ, expected grayscale")
    image = image[..., 0]
  if image.ndim != 2:
    hint = ("; a movie? `neuroseg-jax segment` makes summary images from movies"
            if image.ndim == 3 else "")
    raise DataError(path, f"expected a 2-D grayscale image [H, W], got shape {image.shape}{hint}")
  if image.size == 0:
    raise DataError(path, "empty image")
  check_pixel_dtype(path, image.dtype)
  check_finite(path, image[None])
  return image.astype(np.float32)


def list_yolo_folder(folder) -> list[tuple[str, Path, Path]]:
  """Pairs `images/<name>.<ext>` with `labels/<name>.txt` -> [(name, image, label)]
  sorted by name. A missing label file or an empty folder is a DataError."""
  folder = Path(folder)
  image_dir = folder / "images"
  if not image_dir.is_dir():
    raise DataError(folder, "no images/ folder")
  images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not images:
    raise DataError(image_dir, f"no images ({', '.join(IMAGE_SUFFIXES)})")
  pairs = []
  for image in images:
    label = folder / "labels" / f"{image.stem}.txt"
    if not label.is_file():
      raise DataError(label, f"file not found (label for {image.name})")
    pairs.append((image.stem, image, label))
  return pairs


def check_yolo_folder(folder) -> int:
  """Reads every image and label of a YOLO-layout folder once, so bad data fails (naming
  the file) before anything is trained; returns the number of labeled images."""
  examples = list_yolo_folder(folder)
  for _, image, label in examples:
    read_yolo_example(image, label)
  return len(examples)


def read_yolo_example(image_path, label_path) -> tuple[np.ndarray, np.ndarray]:
  """One YOLO-layout example -> (image [H, W] float32, masks [N, H, W] bool)."""
  image = read_summary_image(image_path)
  return image, read_yolo_masks(label_path, image.shape)
