"""The inputs of `neuroseg-jax segment`: what each one is, checked before the network loads.

`check_inputs` finds what can be known without reading every frame: that each path
exists and is a movie (multipage TIFF, HDF5, a folder of frames) or a summary image,
that a movie opens with at least 2 frames (a cut TIFF fails here), and that a summary
image reads. It imports no JAX, so the command line rejects such input in about a
second. Non-finite pixels of a movie show up only when its frames are read, during
segmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import tifffile

from neuroseg_jax.data import images
from neuroseg_jax.data import movies
from neuroseg_jax.errors import DataError

SUMMARY_SUFFIXES = (".jpg", ".jpeg", ".png")
MOVIE_SUFFIXES = (".h5", ".hdf5")


def is_movie(path: Path) -> bool:
  """A folder of frames, an HDF5 file or a multipage TIFF; single images are not."""
  if path.is_dir() or path.suffix.lower() in MOVIE_SUFFIXES:
    return True
  if path.suffix.lower() in (".tif", ".tiff"):
    try:
      with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        return len(series.shape) == 3 and series.shape[-1] not in (3, 4)
    except Exception as e:  # tifffile raises many types on junk files
      raise DataError(path, f"not a readable TIFF file ({e})") from e
  if path.suffix.lower() in SUMMARY_SUFFIXES:
    return False
  raise DataError(path, "unknown input type; expected a movie (multipage .tif, .h5, a folder "
                  "of frames) or a summary image (.tif, .png, .jpg)")


def open_input_movie(path: Path, dataset: str | None) -> movies.Movie:
  """The movie at `path` (HDF5: `dataset`, default "mov"), with at least 2 frames."""
  movie = movies.open_movie(path, **({"key": dataset} if dataset else {}))
  if len(movie) < 2:
    movie.close()
    raise DataError(path, "a movie needs at least 2 frames")
  return movie


def check_inputs(inputs: Sequence[str], dataset: str | None) -> None:
  """Raises a DataError naming the first input that cannot be segmented (HDF5 movies:
  `dataset`); see the module docstring for what is checked."""
  paths = [Path(p) for p in inputs]
  for path in paths:
    if not path.exists():
      raise DataError(path, "no such file or folder")
  for path in paths:
    if is_movie(path):
      open_input_movie(path, dataset).close()
    else:
      images.read_summary_image(path)
