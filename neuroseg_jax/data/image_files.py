"""One 2-D image file -> its pixel array [H, W] (or [H, W, C]), fully decoded.

TIFF files are read with tifffile, every other format (PNG, JPEG, ...) with PIL.
PIL decodes lazily, and when `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is set (any
library in the process may set it) it pads a truncated file with grey instead of
failing. We decode the whole image at once and refuse to run with that switch
on, so a truncated slice or summary image is a DataError, never silent grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageFile

from neuroseg_jax.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")


def _open_pil(path: Path) -> Image.Image:
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise DataError(path, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so a truncated image "
                    "cannot be told from a complete one; unset it")
  return Image.open(path)


def read_image_file(path) -> np.ndarray:
  """The stored pixel values of an image file (palette images: palette indices).

  Raises a DataError naming the file if it is missing, unreadable or truncated.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file not found")
  try:
    if path.suffix.lower() in TIFF_SUFFIXES:
      return tifffile.imread(path)
    with _open_pil(path) as image:
      image.load()  # full decode: raises on a truncated file.
      return np.asarray(image)
  except DataError:
    raise
  except Exception as e:  # the image libraries raise many types on junk and cut files.
    raise DataError(path, f"not a readable image file ({e})") from e


def image_shape(path) -> tuple[int, ...]:
  """(H, W) or (H, W, C) from the file's header alone (nothing is decoded)."""
  path = Path(path)
  try:
    if path.suffix.lower() in TIFF_SUFFIXES:
      with tifffile.TiffFile(path) as tiff:
        return tuple(tiff.pages[0].shape)
    with _open_pil(path) as image:
      bands = len(image.getbands())
      return (image.height, image.width) + ((bands,) if bands > 1 else ())
  except DataError:
    raise
  except Exception as e:  # as in read_image_file.
    raise DataError(path, f"not a readable image file ({e})") from e
