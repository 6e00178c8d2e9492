"""The scores of a finished EM slice run (task "em_slice_boundary") for the studies.

A run's evaluation (`evaluation/slice_evaluator.py`) writes WORKDIR/slice_evaluation.json
at the end of training. Evaluation settings are not part of what a run trains
(`run_folder.IGNORED_GROUPS`), so a finished run whose JSON predates the current
watershed fields, or matched the slices' noise otherwise than its config now asks, is
evaluated again from its final state, without training: the studies then report every
run under the same evaluation.

`out_of_fold_scores` adds the scores with the watershed tuned on out-of-fold maps of the
run's training slices (fold runs of the same config beside it), the protocol of
`neuroseg-jax train-em --tune-folds`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.data.slice_ranges import fold_splits, slices_text
from neuroseg_jax.evaluation import slice_evaluator, slice_segmentation
from neuroseg_jax.tasks import em_slices
from neuroseg_jax.training import loop

EVALUATION = "slice_evaluation.json"


def evaluated_as_asked(path: str, match_noise: bool) -> bool:
  """Whether the evaluation JSON exists, tuned every current watershed field and
  matched the slices' noise (or not) as asked."""
  if not os.path.exists(path):
    return False
  with open(path) as f:
    evaluation = json.load(f)
  return (set(evaluation["watershed"]) ==
          {f.name for f in dataclasses.fields(slice_segmentation.WatershedParams)} and
          "noise_target" in evaluation and bool(evaluation["noise_target"]) == match_noise)


def predictor(task, state):
  """The host-facing predict function of a run's state: numpy batch in, numpy out."""
  predict_fn = jax.jit(task.predict_fn)
  return lambda batch: jax.device_get(predict_fn(state["params"], state["model_state"], batch))


def evaluate(task, state, workdir: str) -> None:
  """Runs the task's evaluators on a finished run's final state (writes its JSON)."""
  for evaluator in task.evaluators(workdir):
    list(evaluator.run(predictor(task, state)))


def slice_scores(task, state, workdir: str) -> dict:
  """{"val/arand", "val/voi_split", "val/voi_merge", "val/arand_oracle", "train/arand":
  floats, "watershed": the chosen parameters} of the run in `workdir` (trained to
  `state`), evaluated again first when its JSON is not as the task's config asks."""
  path = os.path.join(workdir, EVALUATION)
  if not evaluated_as_asked(path, bool(task.config.eval.match_noise)):
    evaluate(task, state, workdir)
  with open(path) as f:
    evaluation = json.load(f)
  return {**{f"val/{k}": v for k, v in evaluation["val_mean"].items()},
          "val/arand_oracle": evaluation["val_arand_oracle"],
          "train/arand": evaluation["train_arand"], "watershed": evaluation["watershed"]}


def boundary_maps(task, state, index) -> np.ndarray:
  """[len(index), H, W] boundary maps of the task's slices `index` by the run's `state`,
  as its evaluation predicts them (its windows, its training slices' noise level)."""
  return slice_evaluator.boundary_maps(em_slices.read_slices(task.images, index),
                                       predictor(task, state), task.inference_settings(),
                                       task.noise_target)[0]


def out_of_fold_maps(task, workdir: str, folds: int) -> tuple[np.ndarray, np.ndarray, float]:
  """([N, H, W] maps of the run's N training slices, each by the fold run that did not
  train on it, [N, H, W] their labels, the fold runs' training seconds): the training
  slices cut into `folds` contiguous folds, each predicted by a run of the same config
  trained on the other folds (WORKDIR_fold{k}, resumable, no evaluation of its own)."""
  maps, labels, seconds = [], [], 0.0
  for k, (fold, rest) in enumerate(fold_splits(task.train_index, folds)):
    config = task.config.copy_and_resolve_references()
    config.data.train_slices, config.data.val_slices = slices_text(rest), ""
    fold_task, fold_dir = tasks.build(config), f"{workdir}_fold{k}"
    fold_state = loop.train(fold_task, fold_dir, devices=jax.devices()[:1])
    maps.append(boundary_maps(fold_task, fold_state, fold))
    labels.append(em_slices.read_slices(task.labels, fold))
    seconds += loop.training_seconds(fold_dir)
  return np.concatenate(maps), np.concatenate(labels), seconds


def out_of_fold_scores(task, state, workdir: str, folds: int) -> dict:
  """{"oof/arand", "oof/voi_split", "oof/voi_merge": the validation slices' means, by the
  run's `state`, with the watershed tuned out of fold, "oof/tune_arand", "oof/watershed",
  "oof/folds", "oof/train_seconds": the fold runs' training time}: the watershed grid of
  the config tuned on `out_of_fold_maps`, as `train-em --tune-folds` does."""
  maps, labels, seconds = out_of_fold_maps(task, workdir, folds)
  params, table = slice_segmentation.tune_watershed(
      maps, labels, em_slices.watershed_grid(task.config.eval))
  scores = slice_segmentation.slice_scores(
      em_slices.read_slices(task.labels, task.val_index),
      slice_segmentation.watershed_slices(boundary_maps(task, state, task.val_index), params))
  return {**{f"oof/{k}": v for k, v in slice_segmentation.mean_scores(scores).items()},
          "oof/tune_arand": table[params], "oof/watershed": dataclasses.asdict(params),
          "oof/folds": folds, "oof/train_seconds": round(seconds, 1)}
