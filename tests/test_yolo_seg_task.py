"""The supervised NeuroSeg-III task: the smoke config end to end, and its data splits.

One `train_and_evaluate` run (the XLA compile of the full YOLOSeg step dominates
the cost) covers: training on the smoke config, the train / val records of
metrics.jsonl, a falling loss on a fixed batch, the final checkpoint, the outline
figure, and restoring the finished run (what experiments/abo_crossval.py relies on).
"""

import os
import pathlib
import types

import jax
import ml_collections
import numpy as np
import pytest

from neuroseg_jax import config_loading
from neuroseg_jax.tasks.yolo_seg import split_samples
from neuroseg_jax.training import checkpointing
from neuroseg_jax.training import loop
from neuroseg_jax import tasks

pytestmark = pytest.mark.runs_long(seconds=150)  # scheduled first (conftest.py)

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "neuroseg3_seg.py"
STEPS = 16
LOSS_TERMS = ("box", "cls", "dfl", "mask")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(config, workdir, final state) of the smoke variant trained on one fixed image.

  Without augmentation or drop-path and with one training image, every step sees
  the same batch, so the loss must fall. At the smoke variant's lr (1e-3) AdamW's
  first steps on one batch of 2 can shrink every predicted box off its neuron, so the
  assigner finds no positives and the loss falls to the class term alone; 1e-4 fits.
  """
  config = config_loading.load_config(f"{CONFIG}:smoke,num_steps={STEPS},num_train=1,lr=1e-4")
  config.data.augment = ""
  config.model.drop_path_rate = 0.0
  config.log_every = 1
  workdir = str(tmp_path_factory.mktemp("smoke"))
  state = loop.train(tasks.build(config), workdir, devices=jax.devices()[:1])
  return config, workdir, state


def _train_records(workdir):
  return [r for r in loop.read_metrics(workdir) if "train/loss" in r]


def test_smoke_logs_every_step_with_loss_terms_summing_to_the_loss(smoke_run):
  _, workdir, _ = smoke_run
  records = _train_records(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  for record in records:
    terms = [record[f"train/{name}"] for name in LOSS_TERMS]
    assert all(np.isfinite(terms)) and min(terms) >= 0
    assert sum(terms) == pytest.approx(record["train/loss"], rel=1e-5)
    assert record["train/num_positives"] >= 1  # the image holds active simulated cells


def test_smoke_loss_falls_on_a_fixed_batch(smoke_run):
  _, workdir, _ = smoke_run
  losses = np.array([r["train/loss"] for r in _train_records(workdir)])
  masks = np.array([r["train/mask"] for r in _train_records(workdir)])
  assert losses[-4:].mean() < 0.8 * losses[:4].mean(), losses
  assert masks[-4:].mean() < masks[:4].mean(), masks


def test_smoke_writes_neuron_metrics_checkpoint_and_figure(smoke_run):
  config, workdir, state = smoke_run
  evals = [r for r in loop.read_metrics(workdir) if "val/f1" in r]
  assert len(evals) == 1 and evals[0]["step"] == STEPS  # smoke: evaluated at the end only
  values = evals[0]
  for name in ("precision", "recall", "f1", "map50", "map50_95", "best_f1"):
    assert 0.0 <= values[f"val/{name}"] <= 1.0, name
  # Without a fixed conf_threshold the reported F1 is the one at the best threshold.
  assert values["val/f1"] == pytest.approx(values["val/best_f1"])
  precision, recall = values["val/precision"], values["val/recall"]
  expected_f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  assert values["val/f1"] == pytest.approx(expected_f1, abs=1e-6)
  assert values["val/map50_95"] <= values["val/map50"] + 1e-9

  checkpoints = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert checkpoints.latest_step() == STEPS
  checkpoints.close()
  assert int(jax.device_get(state["step"])) == STEPS
  val_name = "sim_0_2"  # smoke: 3 recordings, the last one held out (num_val=1)
  assert os.path.isfile(os.path.join(workdir, "figures", f"{val_name}.png"))
  assert config.data.num_val == 1


def test_finished_run_restores_instead_of_training(smoke_run):
  config, workdir, state = smoke_run
  restored = loop.train(tasks.build(config), workdir, devices=jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(jax.device_get(state["params"])),
                  jax.tree.leaves(jax.device_get(restored["params"]))):
    np.testing.assert_array_equal(a, b)
  assert len(_train_records(workdir)) == STEPS  # no step was run again


def _data(**fields):
  base = {"fold": -1, "num_folds": 5, "num_val": 2, "num_train": -1, "val_images": ""}
  return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("count,num_folds", [(10, 5), (11, 3), (7, 7)])
def test_folds_partition_the_images(count, num_folds):
  samples = [f"img{i}" for i in range(count)]
  vals = []
  for fold in range(num_folds):
    train, val = split_samples(samples, _data(fold=fold, num_folds=num_folds))
    assert sorted(train + val) == sorted(samples) and not set(train) & set(val)
    assert [samples.index(s) for s in train] == sorted(samples.index(s) for s in train)
    vals.append(val)
  assert sorted(sum(vals, [])) == sorted(samples)  # each image is validation exactly once
  sizes = sorted(len(v) for v in vals)
  assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == count
  if (count, num_folds) == (10, 5):
    assert vals[3] == ["img6", "img7"]  # folds are contiguous blocks


def test_named_validation_images_win_over_the_fold():
  samples = [types.SimpleNamespace(name=f"img{i}") for i in range(10)]
  train, val = split_samples(samples, _data(fold=0, val_images="img6+img9"))
  assert [s.name for s in val] == ["img6", "img9"]
  assert [s.name for s in train] == [f"img{i}" for i in (0, 1, 2, 3, 4, 5, 7, 8)]
  with pytest.raises(ValueError, match="img12"):
    split_samples(samples, _data(val_images="img6+img12"))
  with pytest.raises(ValueError, match="none is left"):
    split_samples(samples, _data(val_images="+".join(s.name for s in samples)))


def test_hold_out_keeps_the_last_images_for_validation():
  samples = list(range(10))
  train, val = split_samples(samples, _data(num_val=3))
  assert train == list(range(7)) and val == [7, 8, 9]


@pytest.mark.parametrize("fold", [-1, 2])
def test_label_budgets_are_nested_subsets(fold):
  samples = list(range(10))
  full, val = split_samples(samples, _data(fold=fold))
  previous = []
  for budget in (1, 2, 4, 8):
    train, val_budget = split_samples(samples, _data(fold=fold, num_train=budget))
    assert len(train) == budget and train[:len(previous)] == previous
    assert set(train) <= set(full) and val_budget == val  # validation does not change
    previous = train


@pytest.mark.parametrize("fields,match", [
    ({"fold": 5, "num_folds": 5}, "fold=5"),
    ({"fold": 0, "num_folds": 11}, "num_folds=11"),
    ({"num_val": -1}, "num_val=-1"),
    ({"num_val": 10}, "num_val=10"),
    ({"fold": 0, "num_train": 9}, "num_train=9"),
])
def test_bad_splits_name_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    split_samples(list(range(10)), _data(**fields))


def test_num_val_zero_trains_on_every_image():
  samples = list(range(10))
  train, val = split_samples(samples, _data(num_val=0))
  assert train == samples and val == []
