"""A trained NeuroSeg-III model for users: `load_model("builtin" | MODEL_DIR).predict(images)`.

  model = neuroseg_jax.load_model("builtin")
  found = model.predict([summary_image])       # [H, W] grayscale, any size
  found[0].masks, found[0].scores              # [N, H, W] bool, [N] float32

Images are segmented at their own pixel scale (the built-in model expects about
0.8 um per pixel, as in the Allen Brain Observatory): fields up to the model's
tile size run in one pass, larger ones in overlapping tiles
(`evaluation.tiled_inference.segment_field`). A model trained at a zoom (its
folder's input.zoom, e.g. 2 for `neuroseg-jax train --zoom 2`) sees each field
magnified by it, tile by tile, and answers in the field's own pixels.
Detections are kept at the model's confidence threshold, which was chosen on its
training images and is stored in the model folder (`model_folder.py`);
`conf_threshold=` overrides it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import numpy as np

from neuroseg_jax import model_folder
from neuroseg_jax.data import summary_images
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import flip_tta
from neuroseg_jax.evaluation import tiled_inference
from neuroseg_jax.evaluation import yolo_postprocess as post
from neuroseg_jax.models import yolo_seg

BUILTIN_MODELS = {"builtin": os.path.join(os.path.dirname(__file__), "builtin", "neuroseg3_abo")}
STRIDE = 32  # the network's largest stride: input sides are multiples of it


@functools.lru_cache(maxsize=8)
def _compiled_network(architecture_json: str):
  """One jitted forward pass per architecture, shared by every model of it (weights are
  an argument), so a second model of the same shape does not compile again."""
  network = yolo_seg.build_yolo_seg({**json.loads(architecture_json), "dtype": "float32"})
  return jax.jit(lambda variables, images: network.apply(variables, images, train=False))


class NeuronModel:
  """A NeuroSeg-III network with its weights, input spec and confidence threshold."""

  def __init__(self, folder: model_folder.ModelFolder, source: str):
    self.source = source
    self.spec = folder.spec
    self.channels = tuple(self.spec["input"]["channels"])
    self.normalization = self.spec["input"]["normalization"]
    self.tile_size = int(self.spec["input"]["tile_size"])
    self.overlap = int(self.spec["input"]["overlap"])
    # Input pixels per image pixel: 2 for a network trained on fields magnified 2x.
    self.zoom = float(self.spec["input"].get("zoom", 1.0))
    self.conf_threshold = float(self.spec["conf_threshold"])
    # Averaging four flips changes the score scale; older folders have one threshold.
    self.tta_conf_threshold = float(self.spec.get("tta_conf_threshold", self.conf_threshold))
    self.settings = post.PostprocessSettings(**{**self.spec.get("postprocess", {}),
                                                "conf_threshold": post.LOW_CONFIDENCE})
    apply = _compiled_network(json.dumps(self.spec["architecture"], sort_keys=True))
    variables = jax.device_put(folder.variables)
    self._predict = lambda batch: jax.device_get(apply(variables, batch["image"]))

  def network_input(self, image: np.ndarray | dict) -> np.ndarray:
    """[H, W] grayscale image, or {channel name: [H, W]} summary images -> [H, W, C]."""
    if not isinstance(image, dict):
      image = np.asarray(image, np.float32)
      if image.ndim != 2:
        raise DataError("image", f"expected a 2-D [H, W] image, got shape {image.shape}")
      image = {name: image for name in set(self.channels)}
    missing = sorted(set(self.channels) - set(image))
    if missing:
      raise DataError("image", f"the model needs summary images {missing}, got {sorted(image)}")
    return summary_images.stack_channels(image, self.channels, self.normalization)

  def detect(self, network_image: np.ndarray, batch_size: int = 4, tta: bool = False,
             min_score: float = post.LOW_CONFIDENCE) -> post.Instances:
    """[H, W, C] network input -> every detection scoring at least `min_score` (by
    default a low confidence, for choosing thresholds), by score; `tta` averages the
    network over the four flips of each tile (`flip_tta`).

    Suppression is greedy by score, so a detection below `min_score` never removes
    one above it: dropping them first (as `predict` does) gives the same detections
    above it, without assembling, moving and comparing the masks of hundreds of
    low-scoring candidates (~1 s less per ABO field)."""
    settings = dataclasses.replace(self.settings, conf_threshold=min_score)
    # A field smaller than a tile runs as one input just large enough (a multiple of 32).
    magnified = int(np.ceil(max(network_image.shape[:2]) * self.zoom))
    tile = min(self.tile_size, -(-magnified // STRIDE) * STRIDE)
    predict = flip_tta.with_flips(self._predict) if tta else self._predict
    return tiled_inference.segment_field(network_image, predict, tile,
                                         min(self.overlap, tile // 2), settings, batch_size,
                                         zoom=self.zoom)

  def warm_up(self, height: int, width: int, tta: bool = False) -> None:
    """Compiles the network for [height, width] fields by segmenting a blank one, so a
    caller can compile while it computes the real image (e.g. during a movie's read)."""
    self.detect(np.zeros((height, width, len(self.channels)), np.float32), tta=tta,
                min_score=1.0)

  def predict(self, images: Sequence[np.ndarray | dict], conf_threshold: float | None = None,
              tta: bool = False) -> list[post.Instances]:
    """Instances (masks [N, H, W] bool, scores [N]) of each image, at the model's threshold
    (with `tta`, the threshold chosen for flip-averaged scores where the folder has one)."""
    if conf_threshold is None:
      conf_threshold = self.tta_conf_threshold if tta else self.conf_threshold
    found = []
    for image in images:
      found.append(self.detect(self.network_input(image), tta=tta, min_score=conf_threshold))
    return found


@functools.lru_cache(maxsize=4)
def load_model(name_or_path: str = "builtin") -> NeuronModel:
  """The built-in model ("builtin") or a model folder written by `neuroseg-jax train`.

  Loaded models are kept (up to 4 per process), so repeated calls reuse the
  compiled network.
  """
  path = BUILTIN_MODELS.get(name_or_path, name_or_path)
  folder = model_folder.read(path)
  if folder.spec.get("kind"):
    raise DataError(path, f"a {folder.spec['kind']!r} model, not a two-photon neuron model: "
                    "use `neuroseg-jax segment-em` or neuroseg_jax.load_em_model")
  return NeuronModel(folder, name_or_path)
