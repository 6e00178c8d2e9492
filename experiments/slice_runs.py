"""The scores of a finished EM slice run (task "em_slice_boundary") for the studies.

A run's evaluation (`evaluation/slice_evaluator.py`) writes WORKDIR/slice_evaluation.json
at the end of training. Evaluation settings are not part of what a run trains
(`run_folder.IGNORED_GROUPS`), so a finished run whose JSON predates the current
watershed fields, or matched the slices' noise otherwise than its config now asks, is
evaluated again from its final state, without training: the studies then report every
run under the same evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from neuroseg_jax.evaluation import slice_segmentation

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


def evaluate(task, state, workdir: str) -> None:
  """Runs the task's evaluators on a finished run's final state (writes its JSON)."""
  predict_fn = jax.jit(task.predict_fn)
  predict = lambda batch: jax.device_get(  # noqa: E731
      predict_fn(state["params"], state["model_state"], batch))
  for evaluator in task.evaluators(workdir):
    list(evaluator.run(predict))


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
