"""Reference PyTorch (ultralytics / NeuroSeg-III) state dicts -> YOLOSeg Flax variables.

Keys look like "model.<layer>.<path>.<tensor>" (e.g. "model.2.m.0.mlp.0.conv.weight").
The layer index selects our submodule through the layer tables below
(`BACKBONE_LAYERS`, `NECK_LAYERS`); the head is the layer after the neck's last one.
Inside a layer the PyTorch path maps name by name, an integer index joining
its parent ("m.0" -> "m_0", "cv2.0.2" -> "cv2_0_2"); tensors map as
  conv weight [O, I, kh, kw]         -> kernel [kh, kw, I, O]
  ConvTranspose2d weight [I, O, 2, 2] -> upsample/kernel [2, 2, I, O]
  BatchNorm / GroupNorm weight, bias  -> scale, bias
  running_mean, running_var          -> batch_stats mean, var
  fusion_weight, conv bias           -> unchanged.
num_batches_tracked is dropped; the frozen DFL weight (0..15) is checked and
dropped (our DFL is a constant). Conversion is strict: every key is used and
every Flax leaf is filled, or DataError lists what is missing / unexpected.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.box_geometry import REG_MAX
from neuroseg_jax.models.yolo_seg import YOLOSeg
from neuroseg_jax.registry import Registry

FlatPath = tuple[str, ...]
_MAX_LISTED = 25

# Reference top-level layer index -> our submodule name, per the layer tables in
# ../shared/reference/neuroseg3/README.md. Layers without parameters (Upsample,
# Concat) are not listed.
BACKBONE_LAYERS = {0: "stem", 1: "down_p2", 2: "stage_p2", 3: "down_p3", 4: "stage_p3",
                   5: "down_p4", 6: "stage_p4", 7: "down_p5", 8: "stage_p5", 9: "sppf"}
NECK_LAYERS: Registry[dict[int, str]] = Registry("neck layer table")
NECK_LAYERS.register("bifpn")({
    10: "lateral_p3", 11: "lateral_p4", 12: "lateral_p5",
    14: "fuse_td_p4", 15: "node_td_p4", 17: "fuse_td_p3", 18: "node_td_p3",
    19: "down_p2", 20: "fuse_bu_p3", 21: "node_bu_p3",
    22: "down_bu_p3", 23: "fuse_bu_p4", 24: "node_bu_p4",
    25: "down_bu_p4", 26: "fuse_bu_p5", 27: "node_bu_p5"})
NECK_LAYERS.register("pan")({
    12: "node_td_p4", 15: "node_td_p3", 16: "down_bu_p3", 18: "node_bu_p4",
    19: "down_bu_p4", 21: "node_bu_p5"})


def load_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a state dict {key: float32 array} from `.npz` or (when torch is installed) `.pt`.

  A `.pt` may hold a plain state dict, {"state_dict": ...}, or an ultralytics
  checkpoint {"model": nn.Module} (unpickling a module needs `allow_pickle=True`
  and the ultralytics package).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(path, "no such file")
  if path.endswith(".npz"):
    with np.load(path) as archive:
      return {k: np.asarray(archive[k], np.float32) for k in archive.files}
  if path.endswith((".pt", ".pth")):
    return _load_torch(path, allow_pickle)
  raise DataError(path, "expected a .npz or .pt/.pth state dict")


def _load_torch(path: str, allow_pickle: bool) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise DataError(path, "reading .pt files needs PyTorch; install torch or convert the "
                    "state dict to .npz (numpy.savez(f, **{k: v.numpy()}))") from err
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as err:  # torch raises several unpickling error types.
    raise DataError(path, f"torch.load failed ({err}); pass allow_pickle=True only for "
                    "checkpoints you trust") from err
  if isinstance(obj, Mapping) and "model" in obj and hasattr(obj["model"], "state_dict"):
    obj = obj["model"].float().state_dict()
  elif isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  elif hasattr(obj, "state_dict"):
    obj = obj.state_dict()
  if not isinstance(obj, Mapping):
    raise DataError(path, f"no state dict found (got {type(obj).__name__})")
  return {k: v.detach().cpu().float().numpy() for k, v in obj.items()}


def torch_layer_table(model: YOLOSeg) -> dict[int, FlatPath]:
  """Reference top-level layer index -> our submodule path, for `model`'s neck."""
  neck_layers = NECK_LAYERS.get(model.neck)
  table = {i: ("backbone", name) for i, name in BACKBONE_LAYERS.items()}
  table.update({i: ("pyramid", name) for i, name in neck_layers.items()})
  table[max(neck_layers) + 1] = ("head",)
  return table


def _module_path(parts: list[str]) -> list[str]:
  """["m", "0", "cv1"] -> ["m_0", "cv1"]: integer indices join their parent's name."""
  path: list[str] = []
  for part in parts:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return path


def _flax_leaf(key: str, value: np.ndarray, table: Mapping[int, FlatPath]):
  """One reference tensor -> (collection, flax path, array); None for dropped tensors."""
  parts = key.split(".")
  if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
    raise DataError(key, "not a 'model.<layer>.<...>' state-dict key")
  layer, rest = int(parts[1]), parts[2:]
  if rest[-1] == "num_batches_tracked":
    return None
  if layer == max(table) and rest == ["dfl", "conv", "weight"]:
    if not np.array_equal(value.ravel(), np.arange(REG_MAX, dtype=value.dtype)):
      raise DataError(key, f"the frozen DFL weight should be 0..{REG_MAX - 1}, got {value.ravel()}")
    return None
  if layer not in table:
    raise DataError(key, f"layer {layer} has no parameters in this model")
  *module, tensor = _module_path(rest)
  prefix = table[layer] + tuple(module)
  if tensor in ("running_mean", "running_var"):
    return "batch_stats", prefix + (tensor.removeprefix("running_"),), value
  if tensor == "weight" and value.ndim == 4:
    axes = (2, 3, 0, 1) if module and module[-1] == "upsample" else (2, 3, 1, 0)
    return "params", prefix + ("kernel",), np.transpose(value, axes)
  if tensor == "weight":
    return "params", prefix + ("scale",), value
  return "params", prefix + (tensor,), value


def _listing(title: str, items) -> str:
  items = sorted(items)
  shown = ", ".join(items[:_MAX_LISTED])
  more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"{len(items)} {title}: {shown}{more}"


def convert_state_dict(state: Mapping[str, np.ndarray], model: YOLOSeg,
                       source: str = "state dict") -> dict:
  """Reference state dict -> {"params": ..., "batch_stats": ...} for `model`.

  `source` names the dict in error messages (e.g. the file path). Raises
  DataError listing missing Flax leaves, unexpected / unmappable keys and
  shape mismatches.
  """
  in_channels = np.shape(state["model.0.conv.weight"])[1] if "model.0.conv.weight" in state else 3
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, in_channels)), train=False))
  expected = {("/".join((col,) + path)): leaf.shape for col in ("params", "batch_stats")
              for path, leaf in traverse_util.flatten_dict(shapes[col]).items()}
  table = torch_layer_table(model)
  converted, origin, problems = {}, {}, []
  for key, value in state.items():
    try:
      leaf = _flax_leaf(key, np.asarray(value, np.float32), table)
    except DataError as err:
      problems.append(str(err))
      continue
    if leaf is None:
      continue
    name = "/".join((leaf[0],) + leaf[1])
    converted[name], origin[name] = leaf[2], key
  unexpected = [f"{origin[n]} (-> {n})" for n in converted if n not in expected]
  missing = [n for n in expected if n not in converted]
  mismatched = [f"{origin[n]} {converted[n].shape} vs {n} {expected[n]}"
                for n in converted if n in expected and converted[n].shape != tuple(expected[n])]
  report = [_listing(title, items) for title, items in (
      ("unmappable keys", problems), ("unexpected keys", unexpected),
      ("missing Flax leaves", missing), ("shape mismatches", mismatched)) if items]
  if report:
    raise DataError(source, f"does not match YOLOSeg(scale={model.scale!r}, block={model.block!r}, "
                    f"neck={model.neck!r}): " + "; ".join(report))
  variables = {}
  for name, value in converted.items():
    collection, *path = name.split("/")
    variables.setdefault(collection, {})[tuple(path)] = value
  return {col: traverse_util.unflatten_dict(flat) for col, flat in variables.items()}


def load_reference_variables(path: str | os.PathLike, model: YOLOSeg,
                             allow_pickle: bool = False) -> dict:
  """`load_state_dict` + `convert_state_dict`: a checkpoint file -> Flax variables."""
  return convert_state_dict(load_state_dict(path, allow_pickle), model, source=os.fspath(path))
