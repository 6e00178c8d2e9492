"""EM label volumes [D, H, W]: instance ids as stored, or membrane maps turned into instances.

Some EM data sets (ISBI 2012) label membranes, not cells: each slice [H, W] holds
0 on membrane and one value (255, or 1) on cell interior. Read as instances, such a
volume would be one single cell. `open_labels(path, kind)` reads label volumes as
  instances  the stored ids, as they are;
  membrane   per slice, the 4-connected components of the interior (nonzero
             pixels) numbered 1..K, membrane stays 0 (the usual ISBI 2012 ground
             truth). Ids are unique across the whole volume: the k-th component of
             slice z is z * 2**32 + k (uint64), so 3-D code never sees one id in two
             slices; a volume holding a single value is a DataError;
  auto       membrane when the sampled slices (intensity.sample_slices: first,
             middle, last) hold exactly two values, 0 and v > 0 ({0, 255}, {0, 1}),
             and each of them has more than one 4-connected interior component;
             otherwise instances. Choosing membrane logs one warning naming the
             file, so a folder of 0/255 membrane maps is never silently one cell.
A binary mask of several blobs per slice therefore also becomes per-slice
components, which is what instance training needs of it; pass kind "instances"
to keep the stored values.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy import ndimage

from neuroseg_jax.data import em_volumes
from neuroseg_jax.data.intensity import sample_slices
from neuroseg_jax.errors import ConfigError, DataError

LABEL_KINDS = ("auto", "instances", "membrane")
SLICE_ID_STRIDE = 2**32  # id of component k of slice z: z * SLICE_ID_STRIDE + k.
CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity in-plane.
CACHE_BYTES = 2**28  # labelled slices kept per volume (all of a 512 x 512 x 256 stack).
log = logging.getLogger(__name__)


def membrane_to_instances(slice_) -> np.ndarray:
  """Membrane map [H, W] (0 = membrane, nonzero = interior) -> int32 labels [H, W]:
  the 4-connected interior components numbered 1..K, membrane 0."""
  slice_ = np.asarray(slice_)
  if slice_.ndim != 2:
    raise ValueError(f"expected a 2-D membrane map [H, W], got shape {slice_.shape}")
  return ndimage.label(slice_ != 0, structure=CROSS)[0]


class MembraneInstanceVolume(em_volumes.LazyVolume):
  """A membrane-map volume [D, H, W] (array or LazyVolume) read as uint64 instance ids
  [D, H, W], one slice at a time when read (whole slices, so an id does not depend on
  the crop; recently labelled slices are cached)."""

  def __init__(self, volume):
    self.volume = volume
    self.name = getattr(volume, "name", "volume")
    self.shape, self.dtype = tuple(volume.shape), np.dtype(np.uint64)
    values = np.unique(sample_slices(volume))
    if len(values) < 2:
      raise DataError(self.name, f"membrane map holds the single value {values[0]}: "
                      "no membrane (0) and interior (nonzero) to tell apart")
    slice_bytes = 4 * self.shape[1] * self.shape[2]
    self._labelled = functools.lru_cache(max(1, CACHE_BYTES // slice_bytes))(self._label)

  def _label(self, z: int) -> np.ndarray:
    return membrane_to_instances(np.asarray(self.volume[z]))

  def _read(self, zs, ys, xs):
    out = np.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), self.dtype)
    for i, z in enumerate(range(zs.start, zs.stop)):
      labels = self._labelled(z)[ys, xs].astype(np.uint64)
      out[i] = np.where(labels > 0, labels + np.uint64(z * SLICE_ID_STRIDE), 0)
    return out


def looks_like_membrane_map(volume) -> bool:
  """The "auto" rule: sampled slices hold exactly {0, v > 0}, each with more than one
  4-connected interior component."""
  sample = sample_slices(volume)
  values = np.unique(sample)
  if len(values) != 2 or values[0] != 0:
    return False
  return all(ndimage.label(s != 0, structure=CROSS)[1] > 1 for s in sample)


def open_labels(path, kind: str = "auto", key: str | None = None) -> em_volumes.LazyVolume:
  """Label volume [D, H, W] at `path` (TIFF stack, HDF5 / zarr dataset `key`, slice
  folder) read as `kind` (see the module docstring)."""
  if kind not in LABEL_KINDS:
    raise ConfigError(f"unknown label kind {kind!r}; valid choices: {', '.join(LABEL_KINDS)}")
  volume = em_volumes.open_volume(path, key, check_constant=False)
  if kind == "auto" and looks_like_membrane_map(volume):
    log.warning("%s: labels hold only 0 and one other value, with several 4-connected "
                "interiors per slice: read as a membrane map (instances = interior components "
                "of each slice); give label kind 'instances' to keep the stored values",
                volume.name)
    kind = "membrane"
  return MembraneInstanceVolume(volume) if kind == "membrane" else volume
