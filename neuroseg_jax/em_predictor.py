"""A trained EM boundary model for users: `load_em_model(MODEL_DIR)`, boundary maps, cells.

  model = load_em_model("models/isbi")          # a folder written by `neuroseg-jax train-em`
  boundary = model.boundary(volume)              # [D, H, W] stored values -> float32 in [0, 1]
  cells = model.segment(boundary)                # [D, H, W] uint32, ids unique over the stack

The model folder (`model_folder.py`: model.json, float16 weights.npz with its
SHA-256, MODEL_CARD.md) describes in model.json:
  kind          "em_slice_boundary" (two-photon NeuroSeg-III folders have no kind)
  architecture  the training config's `model` (U-Net or UNETR, `tasks/em_slices.py`)
  window        [h, w] the training crop = the sliding window of inference
  watershed     `slice_segmentation.WatershedParams` tuned on the training slices
  voxel_size    (z, y, x) nm of the training images when the file recorded it, else null
  noise_level   the training slices' median pixel noise (`noise_matching.noise_level`):
                slices noisier than it are blurred down to it before prediction (ISBI
                2012's later slices are 3x noisier than the first 15); null = never
  scores        what `train-em` measured (training / validation slices)

Values are standardised exactly as in training: the stored values of the volume are
mapped by `intensity.intensity_stats` of that volume (3 sampled slices), so a user's
volume is normalised by its own contrast, as the training volume was. A part of a
larger volume (a slab) should be given the stats of the whole (`stats=`). Windows
[1, h, w] slide with half a window stride and Gaussian blending
(`slice_evaluator.InferenceSettings`). The jitted forward pass is shared by every
model of one architecture (weights are an argument), so a second model of the same
shape does not compile again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from neuroseg_jax import model_folder
from neuroseg_jax.data import intensity, noise_matching
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import slice_evaluator
from neuroseg_jax.evaluation import slice_segmentation
from neuroseg_jax.tasks import em_slices

KIND = "em_slice_boundary"
BATCH_SIZE = 8  # windows per forward pass (fixed, so the forward compiles once)
MATCH_SLAB = 8  # slices read, noise-matched and predicted together


@functools.lru_cache(maxsize=8)
def _compiled_network(architecture_json: str):
  """One jitted [B, h, w, 1] standardised -> [B, h, w, 1] boundary probability per
  architecture, shared by every model of it (weights are an argument)."""
  network = em_slices.build_model(ml_collections.ConfigDict(json.loads(architecture_json)),
                                  jnp.float32)
  return jax.jit(lambda variables, images: jax.nn.sigmoid(
      network.apply(variables, images, train=False)))


def _stored_kind(path: str) -> str | None:
  """model.json's "kind" ("" when it has none), None when unreadable (read() reports it)."""
  try:
    with open(os.path.join(path, model_folder.SPEC)) as f:
      return json.load(f).get("kind", "")
  except (OSError, ValueError, AttributeError):
    return None


class EMBoundaryModel:
  """A 2-D boundary network with its weights, window and watershed settings."""

  def __init__(self, folder: model_folder.ModelFolder, source: str):
    self.source = source
    self.spec = folder.spec
    self.window = tuple(int(w) for w in self.spec["window"])
    self.watershed = slice_segmentation.WatershedParams(**self.spec["watershed"])
    voxel_size = self.spec.get("voxel_size")
    self.voxel_size = tuple(voxel_size) if voxel_size else None
    self.noise_level = self.spec.get("noise_level")
    self.inference = slice_evaluator.InferenceSettings(
        window=self.window, stride=tuple(w // 2 for w in self.window), batch_size=BATCH_SIZE)
    self._forward = _compiled_network(json.dumps(self.spec["architecture"], sort_keys=True))
    self._variables = jax.device_put(folder.variables)

  def boundary(self, volume, stats: intensity.IntensityStats | None = None,
               blur_sigmas: list | None = None) -> np.ndarray:
    """[D, H, W] stored values (array or lazy volume) -> [D, H, W] float32 boundary
    probability (1 = membrane). `stats`: the intensity stats to standardise with
    (default `intensity.intensity_stats(volume)`). With a `noise_level`, slices are
    read MATCH_SLAB at a time and blurred to it first; their sigmas (px, 0 = as
    stored) are appended to `blur_sigmas` when a list is given."""
    if len(volume.shape) != 3:
      raise DataError(getattr(volume, "name", "volume"),
                      f"expected a [D, H, W] volume, got shape {tuple(volume.shape)}")
    if stats is None:
      stats = intensity.intensity_stats(volume)

    def predict_fn(batch):  # {"image": [B, 1, h, w, 1] stored values} -> [B, 1, h, w, 1]
      images = intensity.standardize(np.asarray(batch["image"])[:, 0], stats)
      return np.asarray(self._forward(self._variables, images))[:, None]

    if not self.noise_level:
      return self.inference.predict(predict_fn, volume)
    maps = []
    for z0 in range(0, volume.shape[0], MATCH_SLAB):
      block, sigmas = noise_matching.match_slices(np.asarray(volume[z0:z0 + MATCH_SLAB]),
                                                  self.noise_level)
      if blur_sigmas is not None:
        blur_sigmas.extend(sigmas)
      maps.append(self.inference.predict(predict_fn, block))
    return np.concatenate(maps)

  def segment(self, boundary) -> np.ndarray:
    """[D, H, W] boundary probability -> [D, H, W] uint32 cells per slice (watershed
    with the saved parameters), ids unique over the stack, every pixel labeled."""
    return slice_segmentation.watershed_slices(boundary, self.watershed)

  def describe(self) -> dict:
    """The model's settings, for result summaries."""
    return {"model": self.source, "architecture": self.spec["architecture"]["name"],
            "window": list(self.window), "watershed": dataclasses.asdict(self.watershed),
            "noise_level": self.noise_level,
            "voxel_size": list(self.voxel_size) if self.voxel_size else None}


def load_em_model(path: str) -> EMBoundaryModel:
  """The model folder at `path` written by `neuroseg-jax train-em` (DataError naming it
  when it is not one). Loaded models are kept (up to 4 per process) until their
  model.json changes (a folder that train-em rewrote is read again)."""
  try:
    stamp = os.stat(os.path.join(path, model_folder.SPEC)).st_mtime_ns
  except OSError:
    stamp = None
  return _load_em_model(str(path), stamp)


@functools.lru_cache(maxsize=4)
def _load_em_model(path: str, stamp: int | None) -> EMBoundaryModel:
  del stamp  # part of the cache key only
  if not os.path.isdir(path):
    raise DataError(path, "model folder not found")
  if not model_folder.is_model_folder(path):
    raise DataError(path, "not a model folder (no model.json); write one with "
                    "`neuroseg-jax train-em`")
  kind = _stored_kind(path)
  if kind is not None and kind != KIND:
    what = f"model.json kind {kind!r}" if kind else "a two-photon NeuroSeg-III model"
    raise DataError(path, f"not an EM boundary model ({what}); write one with "
                    "`neuroseg-jax train-em`")
  folder = model_folder.read(path)
  if folder.spec.get("kind") != KIND:  # model.json unreadable above, yet read() passed
    raise DataError(path, "not an EM boundary model; write one with `neuroseg-jax train-em`")
  return EMBoundaryModel(folder, path)
