"""A trained NeuroSeg-III model as a folder that `load_model` and the commands accept.

  MODEL_DIR/model.json      architecture (`config.model`), input spec (channels,
                            normalisation, tile size), the confidence threshold chosen
                            on the training images, post-processing settings, and
                            the SHA-256 of the weights file
  MODEL_DIR/weights.npz     parameters and BatchNorm statistics, flattened
                            ("params/backbone/...": array), stored as float16 by default
                            (half the size; the network computes in float32)
  MODEL_DIR/MODEL_CARD.md   training data, command, hardware, time, scores, intended use

`read` verifies the checksum before anything is loaded, so a damaged or edited
weights file is a DataError naming the file, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from neuroseg_jax.errors import DataError

FORMAT = 1
SPEC = "model.json"
WEIGHTS = "weights.npz"
CARD = "MODEL_CARD.md"


@dataclasses.dataclass
class ModelFolder:
  """The contents of a model folder.

  spec: model.json as a dict (see the module docstring).
  variables: {"params": pytree, "batch_stats": pytree} of float32 numpy arrays.
  """
  spec: dict
  variables: dict


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = np.asarray(value)
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _write_texts(directory: str, texts: dict[str, str]) -> None:
  """Writes each {file name: text}, each file appearing only once complete."""
  for name, text in texts.items():
    with open(os.path.join(directory, name + ".tmp"), "w") as f:
      f.write(text)
    os.replace(os.path.join(directory, name + ".tmp"), os.path.join(directory, name))


def write(directory: str, spec: dict, variables: dict, card: str,
          storage_dtype: str = "float16") -> None:
  """Writes a model folder; files appear only once complete (temporary name, then rename)."""
  os.makedirs(directory, exist_ok=True)
  flat = {k: v.astype(storage_dtype) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in _flatten(variables).items()}
  weights = os.path.join(directory, WEIGHTS)
  with open(weights + ".tmp", "wb") as f:
    np.savez_compressed(f, **flat)
  os.replace(weights + ".tmp", weights)
  spec = {**spec, "format": FORMAT, "storage_dtype": storage_dtype,
          "weights_sha256": sha256(weights)}
  _write_texts(directory, {CARD: card, SPEC: json.dumps(spec, indent=2)})


def update_spec(directory: str, changes: dict, card_addition: str = "") -> None:
  """Rewrites a verified model folder's description with `changes` (top-level keys) and
  appends `card_addition` to its card; the weights and their checksum stay as they are."""
  folder = read(directory)
  spec = {**folder.spec, **changes}
  with open(os.path.join(directory, CARD)) as f:
    card = f.read()
  _write_texts(directory, {CARD: card + card_addition, SPEC: json.dumps(spec, indent=2)})


def is_model_folder(path: str) -> bool:
  return os.path.isfile(os.path.join(path, SPEC))


def read(directory: str) -> ModelFolder:
  """Reads and verifies a model folder; DataError naming the file on any problem."""
  spec_path = os.path.join(directory, SPEC)
  if not os.path.isdir(directory):
    raise DataError(directory, "model folder not found")
  try:
    with open(spec_path) as f:
      spec = json.load(f)
  except FileNotFoundError as e:
    raise DataError(spec_path, "not a model folder (no model.json); write one with "
                    "`neuroseg-jax train`") from e
  except json.JSONDecodeError as e:
    raise DataError(spec_path, f"corrupt model description ({e})") from e
  if spec.get("format") != FORMAT:
    raise DataError(spec_path, f"model format {spec.get('format')!r}, this version reads {FORMAT}")
  weights = os.path.join(directory, WEIGHTS)
  if not os.path.isfile(weights):
    raise DataError(weights, "weights file missing")
  if sha256(weights) != spec["weights_sha256"]:
    raise DataError(weights, "checksum mismatch: the weights file is damaged or was changed "
                    "after the model was written")
  with np.load(weights) as archive:
    flat = {k: archive[k].astype(np.float32) if np.issubdtype(archive[k].dtype, np.floating)
            else archive[k] for k in archive.files}
  return ModelFolder(spec, _unflatten(flat))
