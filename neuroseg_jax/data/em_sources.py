"""Where an EM volume comes from: one registry shared by MAE pre-training and UNETR fine-tuning.

`open_source(name, spec)` -> `em_volumes.LabeledVolume` (raw [D, H, W] and instance
labels [D, H, W] or None), sliceable and read lazily. Sources (`EM_SOURCES`):
  simulator  the EM simulator's raw volume with its "neurons" or "mitochondria" labels.
  snemi3d    SNEMI3D layout under `path` (train-input.tif, train-labels.tif).
  mitoem     MitoEM layout under `path` (training split), labels optionally at `labels_path`.
  file       any TIFF stack / HDF5 or zarr dataset (`key`) / slice folder at `path`,
             with labels at `labels_path` when given, read as `labels_kind`
             (em_labels: "auto" turns membrane maps into instances). Several volumes
             joined by "+" in `path` ("/a/unlabeled+/a/train/image") are stacked
             along z in that order (raw only: labels need a single path).
Pre-training uses the raw volume only; fine-tuning also needs the labels.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from pathlib import Path

from neuroseg_jax.data import em_labels, em_simulator, em_volumes
from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import Registry

EM_SOURCES: Registry[Callable[["SourceSpec"], em_volumes.LabeledVolume]] = Registry(
    "EM volume source")
SIMULATOR_LABELS = ("neurons", "mitochondria")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """What a source needs; each source reads only its own fields.

  path: the volume file or folder (file; several joined by "+"), or the dataset's root
    folder (snemi3d, mitoem).
  key: HDF5 / zarr dataset of the raw volume ("" = the file's only dataset).
  labels_path: instance-label volume (file; mitoem: instead of the label folders).
  labels_kind: how the file source reads labels_path: one of em_labels.LABEL_KINDS.
  simulator_shape, simulator_seed, simulator_zoom, simulator_labels: the simulated
    volume [D, H, W], its seed, the zoom of its structures and which labels it gives.
  """
  path: str = ""
  key: str = ""
  labels_path: str = ""
  labels_kind: str = "auto"
  simulator_shape: tuple = (32, 128, 128)
  simulator_seed: int = 0
  simulator_zoom: float = 1.0
  simulator_labels: str = "neurons"


@EM_SOURCES.register("simulator")
def _simulated_volume(spec: SourceSpec) -> em_volumes.LabeledVolume:
  if spec.simulator_labels not in SIMULATOR_LABELS:
    raise DataError("simulator_labels", f"expected one of {SIMULATOR_LABELS}, "
                    f"got {spec.simulator_labels!r}")
  params = em_simulator.EMSimulationParams().zoomed(spec.simulator_zoom)
  volume = em_simulator.simulate_em_volume(tuple(spec.simulator_shape), spec.simulator_seed,
                                           params)
  return em_volumes.LabeledVolume(volume.raw, getattr(volume, spec.simulator_labels))


@EM_SOURCES.register("snemi3d")
def _snemi3d_volume(spec: SourceSpec) -> em_volumes.LabeledVolume:
  return em_volumes.open_snemi3d(spec.path, "train")


@EM_SOURCES.register("mitoem")
def _mitoem_volume(spec: SourceSpec) -> em_volumes.LabeledVolume:
  return em_volumes.open_mitoem(spec.path, "train", labels_path=spec.labels_path or None)


@EM_SOURCES.register("file")
def _file_volume(spec: SourceSpec) -> em_volumes.LabeledVolume:
  if not spec.path:
    raise DataError("path", "source 'file' needs a volume path (TIFF, HDF5, zarr or slice "
                    "folder)")
  paths = [spec.path] if Path(spec.path).exists() else spec.path.split("+")
  if len(paths) > 1 and spec.labels_path:
    raise DataError(spec.path, f"labels_path is only allowed with a single volume path, got "
                    f"{len(paths)} joined by '+'")
  volumes = [em_volumes.open_volume(path, spec.key or None) for path in paths]
  raw = volumes[0] if len(volumes) == 1 else em_volumes.ConcatenatedVolume(volumes)
  if not spec.labels_path:
    return em_volumes.LabeledVolume(raw, None)
  labels = em_labels.open_labels(spec.labels_path, spec.labels_kind)
  em_volumes.check_aligned(raw, labels)
  return em_volumes.LabeledVolume(raw, labels)


def open_source(name: str, spec: SourceSpec) -> em_volumes.LabeledVolume:
  """The volume of source `name` (UnknownNameError listing the valid names otherwise)."""
  return EM_SOURCES.get(name)(spec)
