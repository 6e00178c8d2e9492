"""experiments/slice_runs.py: a finished EM slice run is evaluated again when the
evaluation it holds is not the one its config now asks for."""

import dataclasses
import json

import jax

from experiments import slice_runs
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.evaluation import slice_segmentation
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
