"""Unlabeled 2-D images for self-supervised pre-training (TiCo), from several sources.

A source spec is a "+"-separated list of `kind:argument` items, e.g.

  "images:/data/abo275+movie:/data/sima_movie/example.tif"
  "simulator:8"

Kinds (registry `UNLABELED_SOURCES`):
  movie:PATH      any movie `open_movie` reads (TIFF stack, frame folder, HDF5);
                  PATH may be a glob. Each movie gives the max projection of every
                  consecutive `window`-frame window (NeuroSeg-III's recipe: 10).
  images:PATH     a folder of summary images (or a dataset folder with an images/
                  subfolder, e.g. abo275; labels are ignored) or a glob of files.
  simulator[:N]   N simulated two-photon movies (default `simulator.num_movies`),
                  turned into windowed max projections like real movies.

Every image comes back as [H, W] float32 in its native value range; the task
normalises it and replicates it to the network's input channels.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Callable

import numpy as np

from neuroseg_jax.data import twophoton_sim
from neuroseg_jax.errors import DataError
from neuroseg_jax.data.images import IMAGE_SUFFIXES, read_summary_image
from neuroseg_jax.data.movies import open_movie
from neuroseg_jax.data.summary_images import windowed_max_projections
from neuroseg_jax.registry import Registry

SourceFn = Callable[[str, Any], list[np.ndarray]]
UNLABELED_SOURCES: Registry[SourceFn] = Registry("unlabeled image source")


def _expand(pattern: str) -> list[Path]:
  """A path or glob -> existing paths (sorted); nothing matching is a DataError."""
  if any(c in pattern for c in "*?["):
    paths = sorted(Path(p) for p in glob.glob(pattern))
  else:
    paths = [Path(pattern)] if Path(pattern).exists() else []
  if not paths:
    raise DataError(pattern, "no such file or folder")
  return paths


@UNLABELED_SOURCES.register("movie")
def movie_projections(argument: str, options: Any) -> list[np.ndarray]:
  """Windowed max projections [H, W] of every movie matching `argument`."""
  images = []
  for path in _expand(argument):
    with open_movie(path) as movie:
      images.extend(windowed_max_projections(movie, window=options.window))
  return images


def _image_files(path: Path) -> list[Path]:
  if path.is_file():
    return [path]
  folder = path / "images" if (path / "images").is_dir() else path
  files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise DataError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)})")
  return files


@UNLABELED_SOURCES.register("images")
def image_folder(argument: str, options: Any) -> list[np.ndarray]:
  """Every summary image [H, W] in the folders / files matching `argument`."""
  del options
  return [read_summary_image(f) for path in _expand(argument) for f in _image_files(path)]


@UNLABELED_SOURCES.register("simulator")
def simulated_projections(argument: str, options: Any) -> list[np.ndarray]:
  """Windowed max projections [H, W] of `argument` (or simulator.num_movies) simulated
  movies with seeds options.seed, options.seed + 1, ..."""
  settings = options.simulator.to_dict() if hasattr(options.simulator, "to_dict") else dict(
      options.simulator)
  count = settings.pop("num_movies")
  if argument:
    if not argument.isdigit():
      raise DataError(f"simulator:{argument}", "expected a number of movies (simulator:N)")
    count = int(argument)
  config = twophoton_sim.SimulationConfig(**settings)
  images = []
  for index in range(count):
    movie = twophoton_sim.simulate_recording(config, seed=options.seed + index).movie
    images.extend(windowed_max_projections(movie, window=options.window))
  return images


def parse_source(spec: str) -> list[tuple[str, str]]:
  """"kind:arg+kind:arg" -> [(kind, arg)], checking every kind against the registry."""
  items = []
  for item in spec.split("+"):
    kind, _, argument = item.strip().partition(":")
    if not kind:
      raise ValueError(f"empty item in unlabeled data source {spec!r}")
    UNLABELED_SOURCES.get(kind)
    items.append((kind, argument.strip()))
  return items


def load_unlabeled_images(spec: str, options: Any) -> list[np.ndarray]:
  """All images [H, W] float32 of the source `spec` (see the module docstring).

  `options` carries `window` (frames per max projection), `seed` and
  `simulator` (fields of `twophoton_sim.SimulationConfig` plus `num_movies`).
  """
  images = []
  for kind, argument in parse_source(spec):
    found = UNLABELED_SOURCES.get(kind)(argument, options)
    if not found:
      raise DataError(f"{kind}:{argument}", "no images")
    images.extend(np.asarray(image, np.float32) for image in found)
  return images

