"""Sources of labeled neuron images: each yields a list of `LabeledImage`s.

A source is looked up by name in `NEURON_SOURCES` and called with the config's
arguments: `load_neuron_samples("yolo_folder", folder="../shared/data/abo275")`.

  simulated    simulated recordings -> summary-image channels; ground truth =
               the ACTIVE cells only (>= 1 spike), as in the ABO/STNeuroNet
               labels where silent cells are deliberately unlabeled.
  yolo_folder  images/<id>.jpg + labels/<id>.txt (e.g. abo275); the grayscale
               image is replicated into `num_channels` channels.
  neurofinder  Neurofinder dataset folders (images/*.tiff + regions/regions.json).
  movie_masks  movie files + label files of any supported format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.images import list_yolo_folder, read_yolo_example
from neuroseg_jax.data.labels import load_masks, read_neurofinder
from neuroseg_jax.data.movies import open_movie
from neuroseg_jax.data.summary_images import (DEFAULT_CHUNK_SIZE, compute_summary_images,
                                                stack_channels)
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording
from neuroseg_jax.registry import Registry

NEURON_SOURCES = Registry("neuron data source")
DEFAULT_CHANNELS = ("max", "mean", "corr")


@dataclasses.dataclass
class LabeledImage:
  """name; image [H, W, C] float32 (normalised channels); masks [N, H, W] bool."""
  name: str
  image: np.ndarray
  masks: np.ndarray


def movie_sample(name: str, movie, masks: np.ndarray, channels: Sequence[str] = DEFAULT_CHANNELS,
                 normalization: str = "percentile", chunk_size: int = DEFAULT_CHUNK_SIZE,
                 window: int = 10) -> LabeledImage:
  """Movie [T, H, W] + masks [N, H, W] -> LabeledImage of stacked summary images."""
  summary = compute_summary_images(movie, chunk_size=chunk_size, window=window)
  return LabeledImage(name, stack_channels(summary, channels, normalization), masks)


@NEURON_SOURCES.register("simulated")
def simulated_samples(num_recordings: int = 4, seed: int = 0,
                      channels: Sequence[str] = DEFAULT_CHANNELS,
                      normalization: str = "percentile", chunk_size: int = DEFAULT_CHUNK_SIZE,
                      window: int = 10, **simulation_args) -> list[LabeledImage]:
  """Simulates recordings (SimulationConfig fields as keyword arguments), one
  per independent seed spawned from `seed`; labels = masks of active cells."""
  config = SimulationConfig(**simulation_args)
  seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(num_recordings)]
  samples = []
  for i, recording_seed in enumerate(seeds):
    recording = simulate_recording(config, recording_seed)
    samples.append(movie_sample(f"sim_{seed}_{i}", recording.movie,
                                recording.masks[recording.active], channels, normalization,
                                chunk_size, window))
  return samples


@NEURON_SOURCES.register("yolo_folder")
def yolo_folder_samples(folder, num_channels: int = 3, normalization: str = "percentile",
                        names: Sequence[str] | None = None) -> list[LabeledImage]:
  """All (or the `names` subset of) images of a YOLO folder, sorted by name."""
  pairs = list_yolo_folder(folder)
  if names is not None:
    unknown = set(names) - {name for name, _, _ in pairs}
    if unknown:
      raise DataError(folder, f"no images named {sorted(unknown)}")
    pairs = [pair for pair in pairs if pair[0] in names]
  samples = []
  for name, image_path, label_path in pairs:
    image, masks = read_yolo_example(image_path, label_path)
    channels = stack_channels({"image": image}, ("image",) * num_channels, normalization)
    samples.append(LabeledImage(name, channels, masks))
  return samples


@NEURON_SOURCES.register("neurofinder")
def neurofinder_samples(folders: Sequence[str], channels: Sequence[str] = DEFAULT_CHANNELS,
                        normalization: str = "percentile", chunk_size: int = DEFAULT_CHUNK_SIZE,
                        window: int = 10) -> list[LabeledImage]:
  """One sample per Neurofinder dataset folder."""
  samples = []
  for folder in folders:
    movie, masks = read_neurofinder(folder)
    samples.append(movie_sample(Path(folder).name, movie, masks, channels, normalization,
                                chunk_size, window))
  return samples


@NEURON_SOURCES.register("movie_masks")
def movie_masks_samples(movie_paths: Sequence[str], mask_paths: Sequence[str],
                        channels: Sequence[str] = DEFAULT_CHANNELS,
                        normalization: str = "percentile", chunk_size: int = DEFAULT_CHUNK_SIZE,
                        window: int = 10) -> list[LabeledImage]:
  """Pairs movie_paths[i] (any movie format) with mask_paths[i] (any label format)."""
  if len(movie_paths) != len(mask_paths):
    raise ValueError(f"{len(movie_paths)} movies but {len(mask_paths)} label files")
  samples = []
  for movie_path, mask_path in zip(movie_paths, mask_paths):
    with open_movie(movie_path) as movie:
      masks = load_masks(mask_path, movie.shape[1:])
      samples.append(movie_sample(Path(movie_path).stem, movie, masks, channels, normalization,
                                  chunk_size, window))
  return samples


def load_neuron_samples(source: str, **args) -> list[LabeledImage]:
  """Calls the source registered as `source` with the config's arguments."""
  return NEURON_SOURCES.get(source)(**args)
