"""experiments/slice_runs.py: a finished EM slice run is evaluated again when the
evaluation it holds is not the one its config now asks for; out-of-fold tuning."""

import dataclasses
import json

import jax
import numpy as np

from experiments import slice_runs
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.evaluation import slice_segmentation
from neuroseg_jax.tasks import em_slices
from neuroseg_jax.training import loop

WATERSHED = dataclasses.asdict(slice_segmentation.WatershedParams())


def _write(path, **fields):
  path.write_text(json.dumps({"watershed": WATERSHED, **fields}))
  return str(path)


def test_evaluation_is_as_asked_only_with_the_same_noise_matching(tmp_path):
  assert not slice_runs.evaluated_as_asked(str(tmp_path / "missing.json"), True)
  matched = _write(tmp_path / "matched.json", noise_target=0.015)
  assert slice_runs.evaluated_as_asked(matched, True)
  assert not slice_runs.evaluated_as_asked(matched, False)
  as_stored = _write(tmp_path / "as_stored.json", noise_target=None)
  assert slice_runs.evaluated_as_asked(as_stored, False)
  assert not slice_runs.evaluated_as_asked(as_stored, True)
  older = _write(tmp_path / "older.json")  # written before noise matching existed
  assert not slice_runs.evaluated_as_asked(older, False)
  old_grid = tmp_path / "old_grid.json"
  old_grid.write_text(json.dumps({"watershed": {"seed_threshold": 0.3}, "noise_target": None}))
  assert not slice_runs.evaluated_as_asked(str(old_grid), False)


def test_a_finished_run_is_evaluated_again_without_training(shared_data, tmp_path):
  del shared_data  # the smoke config reads ISBI 2012 slices 0 and 1
  workdir = str(tmp_path / "run")
  evaluations, logged = [], []
  for match_noise in (True, False):
    config = config_loading.load_config(
        f"configs/em2d_boundary.py:smoke,match_noise={match_noise}")
    task = tasks.build(config)
    state = loop.train(task, workdir, devices=jax.devices()[:1])
    scores = slice_runs.slice_scores(task, state, workdir)
    assert 0.0 <= scores["val/arand"] <= 1.0 and set(scores["watershed"]) == set(WATERSHED)
    with open(tmp_path / "run" / slice_runs.EVALUATION) as f:
      evaluations.append(json.load(f))
    logged.append(len(loop.read_metrics(workdir)))
  assert logged[0] == logged[1], "the second pass trained again"
  assert evaluations[0]["noise_target"] > 0 and evaluations[1]["noise_target"] is None
  assert set(evaluations[1]["blur_sigmas"].values()) == {0.0}


def test_out_of_fold_scores_tune_on_fold_runs_maps_of_held_out_slices(shared_data, tmp_path,
                                                                       monkeypatch):
  del shared_data  # ISBI 2012 slices 0-2
  task = tasks.build(config_loading.load_config(
      "configs/em2d_boundary.py:smoke,train_slices=0-1,val_slices=2"))
  workdir = str(tmp_path / "run")
  state = loop.train(task, workdir, devices=jax.devices()[:1])
  tuned_on = []  # from here on: the fold runs do not evaluate, so only the tuning counts
  tune = slice_runs.slice_segmentation.tune_watershed
  monkeypatch.setattr(slice_runs.slice_segmentation, "tune_watershed",
                      lambda boundary, gt, grid: tuned_on.append((boundary, gt)) or tune(
                          boundary, gt, grid))
  scores = slice_runs.out_of_fold_scores(task, state, workdir, 2)
  for k, rest in enumerate(("1", "0")):  # each fold run trained on the other slice only
    with open(f"{workdir}_fold{k}/config.json") as f:
      config = json.load(f)
    assert (config["data"]["train_slices"], config["data"]["val_slices"]) == (rest, "")
  (boundary, gt), = tuned_on
  assert boundary.shape == gt.shape == (2, 512, 512)
  np.testing.assert_array_equal(gt, em_slices.read_slices(task.labels, [0, 1]))
  own = slice_runs.boundary_maps(task, state, [0, 1])
  assert np.abs(boundary - own).max() > 1e-3  # not the full run's maps of its own slices
  assert 0.0 <= scores["oof/arand"] <= 1.0 and scores["oof/folds"] == 2
  assert set(scores["oof/watershed"]) == set(WATERSHED) and scores["oof/train_seconds"] > 0
