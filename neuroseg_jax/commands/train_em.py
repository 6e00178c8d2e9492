"""`neuroseg-jax train-em`: labeled serial-section EM slices -> an EM boundary model folder.

Data: an image volume [D, H, W] and its labels [D, H, W] (membrane maps such as
ISBI 2012's, 0 = membrane, or instance ids; `--labels-kind`), as slice folders,
TIFF stacks, HDF5 or zarr: FOLDER/image(/|.tif|.h5|.zarr) and FOLDER/label(...),
the first found, or `--images` / `--labels` paths. The run uses
`configs/em2d_boundary.py` (U-Net, or UNETR whose ViT can start from a
`pretrain-em` run, then fine-tuned with layer-wise learning-rate decay
`PRETRAINED_LAYER_DECAY`) in `MODEL_DIR/run/` (resumable: calling the command again
continues it). The training run itself evaluates nothing (its config has no
validation slices, so changing `--val-slices` does not start a new run); afterwards
the model as stored (float16 weights; slices noisier than its training slices are
blurred to their noise level first, `noise_matching.py`) predicts the tuning slices
(`--tune-slices`, labeled slices left out of training; default: the training slices) or, with
`--tune-folds K`, K fold models (`MODEL_DIR/run_fold{k}/`, resumable too) predict
the training slices they did not train on; the per-slice watershed is tuned on
these maps (`slice_segmentation.tune_watershed` over the config's grid; `--merge`
adds the agglomeration of fragments to it), the validation slices are scored with
those parameters (mean adapted Rand error, VOI split / merge), and the model folder
is written (`em_predictor.py` describes model.json) with a model card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from neuroseg_jax import config_loading
from neuroseg_jax import em_predictor
from neuroseg_jax import model_folder
from neuroseg_jax import runtime
from neuroseg_jax import tasks
from neuroseg_jax.data import em_labels
from neuroseg_jax.data import em_volumes
from neuroseg_jax.data.slice_ranges import fold_splits, parse_slices, slices_text
from neuroseg_jax.errors import ConfigError, DataError
from neuroseg_jax.evaluation import slice_segmentation
from neuroseg_jax.tasks import em_slices
from neuroseg_jax.training import loop
from neuroseg_jax.training import transfer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "em2d_boundary.py"
MODELS = ("unet", "unetr")
# Fine-tuning a pre-trained ViT: MAE's layer-wise learning-rate decay (RESULTS.md, "MAE:
# layer-wise learning-rate decay, patch size, budget"; 0.75 as in MAE's own fine-tuning).
PRETRAINED_LAYER_DECAY = 0.75
# Network and crop sizes: the config's own, or its smoke variant (tiny networks, 32x32
# crops, batch 2, a 16-point watershed grid: checks data and pipeline in seconds; segments
# poorly).
SCALES = {"full": "", "smoke": "smoke"}
VOLUME_SUFFIXES = ("", ".tif", ".tiff", ".h5", ".hdf5", ".zarr")  # "" = a slice folder
INTENDED_USE = ("Serial-section transmission EM of neuropil at about 4 nm per pixel (sections "
                "about 50 nm apart), with cell membranes labeled as in ISBI 2012; cells are "
                "segmented slice by slice (no linking across z).")


def find_volume(folder, name: str) -> str:
  """FOLDER/name/ (slice files), name.tif, name.h5 or name.zarr: the first that exists."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(folder, "data folder not found")
  for suffix in VOLUME_SUFFIXES:
    path = folder / f"{name}{suffix}"
    if path.is_dir() if not suffix else path.exists():
      return str(path)
  raise DataError(folder, f"no {name} volume: expected {name}/ (a folder of slice files), "
                  f"{name}.tif, {name}.h5 or {name}.zarr in it")


def resolve_inputs(data: str | None, images: str | None, labels: str | None) -> tuple[str, str]:
  """(images, labels) paths: --images / --labels, else found in the --data folder."""
  if data:
    images = images or find_volume(data, "image")
    labels = labels or find_volume(data, "label")
  if not images or not labels:
    raise ConfigError("give --data FOLDER (holding image/ and label/) or both --images and "
                      "--labels")
  return images, labels


def training_devices(batch_size: int) -> list:
  """The first local devices, as many as divide the batch (all of them when they do)."""
  devices = jax.local_devices()
  return devices[:math.gcd(batch_size, len(devices))]


def check_pretrained_vit(pretrained: str, config: ml_collections.ConfigDict, scale: str) -> None:
  """DataError naming `pretrained` unless its run's ViT and crop are the UNETR's of `config`
  (read from the run's config.json, before anything is trained)."""
  path = os.path.join(pretrained, "config.json")
  try:
    with open(path) as f:
      run = json.load(f)
  except FileNotFoundError:
    raise DataError(pretrained, "not a pre-training run folder (no config.json); write one "
                    "with `neuroseg-jax pretrain-em`") from None
  except ValueError as e:
    raise DataError(path, f"unreadable run config ({e})") from None
  want = {"size": config.model.size, "patch_size": list(config.model.patch_size),
          "use_class_token": config.model.use_class_token, "crop": list(config.data.crop)}
  model, data = run.get("model") or {}, run.get("data") or {}
  have = {**{k: model.get(k) for k in ("size", "patch_size", "use_class_token")},
          "crop": data.get("crop")}
  if have != want:
    raise DataError(pretrained, f"its ViT and crop {have} are not those of the --scale {scale} "
                    f"UNETR {want}; pre-train with `neuroseg-jax pretrain-em --scale {scale}`")


def recipe_config(images: str, labels: str, model: str = "unet", pretrained: str = "",
                  train_slices: str = "0-14", num_steps: int = 400, labels_kind: str = "auto",
                  scale: str = "full", key: str = "", labels_key: str = "", merge: bool = False,
                  seed: int = 0) -> ml_collections.ConfigDict:
  """configs/em2d_boundary.py for these data and settings, without validation slices
  (`merge`: its grid also tunes the agglomeration of fragments)."""
  if model not in MODELS:
    raise ConfigError(f"unknown --model {model!r}; valid choices: {', '.join(MODELS)}")
  if scale not in SCALES:
    raise ConfigError(f"unknown --scale {scale!r}; valid choices: {', '.join(SCALES)}")
  if labels_kind not in em_labels.LABEL_KINDS:
    raise ConfigError(f"unknown --labels-kind {labels_kind!r}; valid choices: "
                      f"{', '.join(em_labels.LABEL_KINDS)}")
  if num_steps < 1:
    raise ConfigError(f"--steps must be at least 1, got {num_steps}")
  if pretrained and model != "unetr":
    raise ConfigError(f"--pretrained needs --model unetr (the ViT that pretrain-em trains); "
                      f"--model {model} trains from scratch")
  if pretrained and not os.path.isdir(pretrained):
    raise DataError(pretrained, "pre-training run folder not found (write one with "
                    "`neuroseg-jax pretrain-em`)")
  if not CONFIG.is_file():
    raise DataError(CONFIG, "config not found; run from a source checkout installed with "
                    "`pip install -e .`")
  variants = ",".join(v for v in (SCALES[scale], model, "merge" if merge else "") if v)
  config = config_loading.load_config(
      f"{CONFIG}:isbi,{variants},num_steps={num_steps},seed={seed}")
  # Paths and slices are set on the config, not in the argument string (commas, "=").
  config.data.images, config.data.key = os.path.abspath(images), key
  config.data.labels, config.data.labels_key = os.path.abspath(labels), labels_key
  config.data.labels_kind = labels_kind
  config.data.train_slices, config.data.val_slices = train_slices, ""
  config.model.pretrained = os.path.abspath(pretrained) if pretrained else ""
  if pretrained:
    check_pretrained_vit(pretrained, config, scale)
    config.optimizer.layer_decay = PRETRAINED_LAYER_DECAY
  return config


def _spec(config, task, params: slice_segmentation.WatershedParams, voxel_size,
          scores: dict) -> dict:
  return {"kind": em_predictor.KIND,
          "architecture": {k: v for k, v in config.model.to_dict().items() if k != "pretrained"},
          "window": list(config.data.crop), "watershed": dataclasses.asdict(params),
          "voxel_size": list(voxel_size) if voxel_size else None,
          "noise_level": task.noise_target,
          "pretrained": config.model.pretrained or None, "scores": scores}


def _architecture(model_cfg) -> str:
  if model_cfg.name == "unet":
    return f"2-D U-Net ({model_cfg.width} wide, {model_cfg.levels} levels)"
  patch = "x".join(map(str, model_cfg.patch_size))
  return (f"2-D UNETR on a ViT-{model_cfg.size} (patch {patch}, class token), decoder "
          f"{model_cfg.decoder_width} wide")


def _layer_decay_text(config) -> str:
  decay = config.optimizer.layer_decay
  return f" (ViT block k from the top at lr x {decay:g}^k)" if decay != 1.0 else ""


def _card(config, task, scale: str, params, voxel_size, scores: dict, seconds: float,
          command: str) -> str:
  data = config.data
  depth, height, width = task.images.shape
  kind = ("membrane maps (instances = 4-connected interiors per slice)"
          if isinstance(task.labels, em_labels.MembraneInstanceVolume) else "instance ids")
  init = (f"the MAE pre-training run `{config.model.pretrained}`" if config.model.pretrained
          else "random weights")
  size = (f"{voxel_size[1]:g} x {voxel_size[2]:g} nm per pixel, sections {voxel_size[0]:g} nm"
          if voxel_size else "not recorded in the image file")
  lines = ["# EM boundary model card", "",
           f"- Architecture: {_architecture(config.model)}: boundary (membrane) probability "
           "per pixel, then a seeded watershed per slice.",
           f"- Training data: images `{data.images}` ({depth} x {height} x {width}), labels "
           f"`{data.labels}` read as {kind}; training slices {data.train_slices} "
           f"({len(task.train_index)}), validation slices "
           f"{scores.get('val_slices') or 'none'}.",
           f"- Voxel size: {size}.",
           f"- Recipe: `configs/em2d_boundary.py` ({scale} sizes), {config.num_steps} steps of "
           f"batch {config.batch_size}, {'x'.join(map(str, data.crop))} px crops, lr "
           f"{config.optimizer.lr}{_layer_decay_text(config)}, dihedral / elastic / "
           "intensity augmentation, seed "
           f"{config.seed}; initialised from {init}.",
           f"- Command: `{command}`", f"- Hardware: {runtime.hardware_description()}.",
           f"- Training wall time: {seconds / 60:.1f} min (the logged steps, compilation "
           "included, of `run/` and any `run_fold*/` fold models; their `metrics.jsonl`).",
           f"- Watershed (tuned on slices {scores['tune_slices']}): seed threshold "
           f"{params.seed_threshold}, min seed size {params.min_seed_size} px, smoothing "
           f"{params.smoothing} px, seed erosion {params.seed_erosion} px, merge threshold "
           f"{params.merge_threshold} (0 = no merging).",
           "- Noise matching: " + (f"slices noisier than {task.noise_target:.4f} of their "
                                   "intensity range (the training slices' median) are blurred "
                                   "to it before prediction." if task.noise_target else "off."),
           f"- Intended use: {INTENDED_USE}", "",
           "## Scores (per slice, then averaged; membrane pixels ignored; lower is better)", ""]
  lines += [f"- {name}: {value}" for name, value in scores.items()]
  return "\n".join(lines) + "\n"


def _as_stored(variables: dict) -> dict:
  """The variables as the model folder will hold them (float16, read back as float32)."""
  return jax.tree.map(lambda v: v.astype(np.float16).astype(np.float32)
                      if np.issubdtype(v.dtype, np.floating) else v, variables)


def _trained_variables(task, run_dir: str, config, overwrite: bool, pretrained: str,
                       scale: str) -> dict:
  """Trains `task` in `run_dir` (resuming it); its variables as the model folder stores them."""
  try:
    state = loop.train(task, run_dir, devices=training_devices(config.batch_size),
                       overwrite=overwrite)
  except transfer.TransferError as e:
    raise DataError(pretrained, f"its ViT does not fit the UNETR of --scale {scale} "
                    f"(pretrain-em with the same --scale writes one that does): {e}") from e
  return _as_stored(jax.tree.map(np.asarray, jax.device_get(
      {"params": state["params"], **state["model_state"]})))


def _draft_model(config, task, variables: dict, voxel_size, out: str
                 ) -> em_predictor.EMBoundaryModel:
  """The model of these variables before its watershed is tuned (default parameters)."""
  return em_predictor.EMBoundaryModel(model_folder.ModelFolder(
      _spec(config, task, slice_segmentation.WatershedParams(), voxel_size, {}), variables), out)


def train_em(images: str, labels: str, out: str, model: str = "unet", pretrained: str = "",
             num_steps: int = 400, train_slices: str = "", val_slices: str = "",
             labels_kind: str = "auto", overwrite: bool = False,
             command: str = "neuroseg-jax train-em", scale: str = "full", key: str = "",
             labels_key: str = "", tune_slices: str = "", merge: bool = False,
             tune_folds: int = 0, seed: int = 0) -> dict:
  """Trains on the labeled slices (default: every slice not in `val_slices` or
  `tune_slices`), tunes the post-processing on `tune_slices`, or with `tune_folds` K on
  out-of-fold maps of the training slices (K contiguous folds, each predicted by a model
  of the same recipe trained on the others, in MODEL_DIR/run_fold{k}: K + 1 trainings),
  or else on the training slices themselves; writes the model folder `out`; returns
  its scores."""
  depth = em_volumes.open_volume(images, key or None).shape[0]
  val_index = parse_slices(val_slices, depth, "--val-slices") if val_slices else []
  tune_index = parse_slices(tune_slices, depth, "--tune-slices") if tune_slices else []
  if set(tune_index) & set(val_index):
    raise ConfigError(f"--tune-slices {tune_slices} overlaps --val-slices {val_slices}")
  if tune_folds and tune_index:
    raise ConfigError("give --tune-slices or --tune-folds, not both")
  if not train_slices:
    rest = sorted(set(range(depth)) - set(val_index) - set(tune_index))
    if not rest:
      raise ConfigError(f"--val-slices and --tune-slices leave no slice of {depth} to train on")
    train_slices = slices_text(rest)
  train_index = parse_slices(train_slices, depth, "--train-slices")
  if tune_folds and not 2 <= tune_folds <= len(train_index):
    raise ConfigError(f"--tune-folds must be from 2 to the {len(train_index)} training slices, "
                      f"got {tune_folds}")
  for name, other, text in (("--val-slices", val_index, val_slices),
                            ("--tune-slices", tune_index, tune_slices)):
    if set(train_index) & set(other):
      raise ConfigError(f"{name} {text} overlaps --train-slices {train_slices}")

  def train_model(slices: str, run_name: str):
    """(config, task, float16-rounded variables) of the recipe trained on `slices`."""
    config = recipe_config(images, labels, model, pretrained, slices, num_steps, labels_kind,
                           scale, key, labels_key, merge, seed)
    task = tasks.build(config)
    return config, task, _trained_variables(task, os.path.join(out, run_name), config,
                                            overwrite, pretrained, scale)

  voxel_size = em_volumes.read_voxel_size(images, key or None)
  config, task, variables = train_model(train_slices, "run")
  draft = _draft_model(config, task, variables, voxel_size, out)
  if tune_folds:  # each fold's slices as predicted by a model trained on the others
    tune_boundary, tune_labels = [], []
    for k, (fold, rest) in enumerate(fold_splits(train_index, tune_folds)):
      fold_config, fold_task, fold_variables = train_model(slices_text(rest), f"run_fold{k}")
      fold_model = _draft_model(fold_config, fold_task, fold_variables, voxel_size, out)
      tune_boundary.append(fold_model.boundary(em_slices.read_slices(task.images, fold),
                                               task.stats))
      tune_labels.append(em_slices.read_slices(task.labels, fold))
    tune_boundary, tune_labels = np.concatenate(tune_boundary), np.concatenate(tune_labels)
  elif tune_index:
    tune_boundary = draft.boundary(em_slices.read_slices(task.images, tune_index), task.stats)
    tune_labels = em_slices.read_slices(task.labels, tune_index)
  else:
    tune_boundary = draft.boundary(task.train_images, task.stats)
    tune_labels = task.train_labels
  params, table = slice_segmentation.tune_watershed(tune_boundary, tune_labels,
                                                    em_slices.watershed_grid(config.eval))
  tuned_on = (f"{train_slices}, out of fold ({tune_folds} folds)" if tune_folds
              else tune_slices or train_slices)
  scores = {"train_slices": train_slices, "tune_slices": tuned_on,
            "tune_arand": round(table[params], 4)}
  if val_index:
    val_boundary = draft.boundary(em_slices.read_slices(task.images, val_index), task.stats)
    val_scores = slice_segmentation.mean_scores(slice_segmentation.slice_scores(
        em_slices.read_slices(task.labels, val_index),
        slice_segmentation.watershed_slices(val_boundary, params)))
    scores["val_slices"] = val_slices
    scores.update({f"val_{name}": round(value, 4) for name, value in val_scores.items()})
  runs = ["run"] + [f"run_fold{k}" for k in range(tune_folds)]
  seconds = sum(loop.training_seconds(os.path.join(out, name)) for name in runs)
  card = _card(config, task, scale, params, voxel_size, scores, seconds, command)
  model_folder.write(out, _spec(config, task, params, voxel_size, scores), variables, card)
  return scores
