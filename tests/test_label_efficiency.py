"""Tables of experiments/label_efficiency.py: aggregation over seeds, CSV / JSON, plot, flags.

No training: runs are hand-made rows with known F1 values.
"""

import csv
import json
import os

import numpy as np
import pytest

from experiments import label_efficiency

# F1 per (init, budget, seed); precision = f1 + 0.05, recall = f1 - 0.05 below.
F1 = {("scratch", 1, 0): 0.2, ("scratch", 1, 1): 0.4, ("scratch", 1, 2): 0.3,
      ("tico", 1, 0): 0.5, ("tico", 1, 1): 0.4, ("tico", 1, 2): 0.9,
      ("scratch", 4, 0): 0.8, ("tico", 4, 0): 0.7}


def _rows():
  return [{"source": "simulated", "seed": seed, "train_seed": 0, "budget": budget, "init": init,
           "train_images": budget, "held_out": "a;b", "conf_threshold": 0.25,
           "true_neurons": 20, "tp": 10, "fp": 2, "fn": 10, "precision": f1 + 0.05,
           "recall": f1 - 0.05, "f1": f1, "seconds": 1.0}
          for (init, budget, seed), f1 in F1.items()]


def _entry(summary, init, budget):
  [entry] = [s for s in summary if s["init"] == init and s["budget"] == budget]
  return entry


def test_summary_mean_std_and_paired_gain():
  summary = label_efficiency.summarize(_rows())
  assert [(s["init"], s["budget"]) for s in summary] == [
      ("scratch", 1), ("scratch", 4), ("tico", 1), ("tico", 4)]
  scratch, tico = _entry(summary, "scratch", 1), _entry(summary, "tico", 1)
  assert scratch["seeds"] == tico["seeds"] == 3
  assert scratch["f1_mean"] == pytest.approx(0.3)
  assert scratch["f1_std"] == pytest.approx(0.1)  # sample std of 0.2, 0.4, 0.3
  assert tico["f1_mean"] == pytest.approx(0.6)
  assert tico["f1_std"] == pytest.approx(np.sqrt(((0.1**2) + (0.2**2) + (0.3**2)) / 2))
  assert tico["precision_mean"] == pytest.approx(0.65)
  assert tico["recall_mean"] == pytest.approx(0.55)
  # Paired gains per seed: +0.3, 0.0, +0.6 -> tico better on 2 of 3 seeds.
  assert tico["gain_mean"] == pytest.approx(0.3)
  assert tico["gain_std"] == pytest.approx(0.3)
  assert tico["seeds_tico_better"] == 2
  assert "gain_mean" not in scratch
  # One seed: std 0, gain -0.1, tico not better.
  single = _entry(summary, "tico", 4)
  assert (single["seeds"], single["f1_std"]) == (1, 0.0)
  assert single["gain_mean"] == pytest.approx(-0.1)
  assert single["seeds_tico_better"] == 0


def test_gain_only_over_seeds_with_both_inits():
  rows = [r for r in _rows() if not (r["init"] == "scratch" and r["seed"] == 2)]
  tico = _entry(label_efficiency.summarize(rows), "tico", 1)
  assert tico["seeds"] == 3
  assert tico["gain_mean"] == pytest.approx(0.15)  # seeds 0 and 1 only: +0.3, 0.0
  assert tico["seeds_tico_better"] == 1


def test_csv_json_and_plot(tmp_path):
  rows = _rows()
  meta = {"command": "python experiments/label_efficiency.py", "seconds": 3.0}
  summary = label_efficiency.write_tables(str(tmp_path), rows, meta)
  with open(tmp_path / "label_efficiency.csv") as f:
    runs_part, summary_part = f.read().split("\n\n")
  runs = list(csv.DictReader(runs_part.splitlines()))
  assert tuple(runs[0]) == label_efficiency.RUN_COLUMNS
  assert [(r["init"], int(r["budget"]), int(r["seed"]), float(r["f1"])) for r in runs] == [
      (init, budget, seed, f1) for (init, budget, seed), f1 in F1.items()]
  aggregated = list(csv.DictReader(summary_part.strip().splitlines()))
  assert tuple(aggregated[0]) == label_efficiency.SUMMARY_COLUMNS
  assert float(aggregated[2]["f1_mean"]) == pytest.approx(0.6)  # tico, budget 1
  assert aggregated[0]["gain_mean"] == ""  # scratch rows have no gain
  with open(tmp_path / "label_efficiency.json") as f:
    stored = json.load(f)
  assert stored["command"] == meta["command"]
  assert stored["runs"] == rows
  assert stored["summary"] == summary
  path = os.path.join(tmp_path, "plot.png")
  label_efficiency.plot(path, rows, summary, "test")
  assert os.path.getsize(path) > 1000


def test_source_defaults_and_bad_simulation_field():
  args = label_efficiency.parse_args(["--workdir", "w", "--source", "abo", "--budgets", "1,2"])
  assert (args.budgets, args.seeds, args.scale, args.train_seed) == ([1, 2], [0], "s", -1)
  assert label_efficiency.training_seed(args, 3) == 3
  config = label_efficiency.finetune_config(args, 3, 2, "tico_dir")
  assert (config.data.num_train, config.data.val_images, config.data.image_size,
          config.num_steps, config.seed, config.pretrained, config.model.scale) == (
              2, label_efficiency.AUTHORS_SPLIT, 160, 400, 3, "tico_dir", "s")
  args = label_efficiency.parse_args(["--workdir", "w", "--sim-args", '{"motion_std": 1.0}'])
  assert (args.budgets, args.seeds, args.sim_args) == ([1, 2, 4], [0, 1, 2], {"motion_std": 1.0})
  assert label_efficiency.training_seed(args, 3) == 0
  with pytest.raises(SystemExit):
    label_efficiency.parse_args(["--workdir", "w", "--sim-args", '{"photons": 3}'])


def test_stored_row_is_reused_without_training(tmp_path):
  args = label_efficiency.parse_args(["--workdir", str(tmp_path)])
  path = label_efficiency.row_path(args, 2, "tico", 4)
  assert path == os.path.join(tmp_path, "seed2", "tico_b4", "row.json")
  os.makedirs(os.path.dirname(path))
  row = _rows()[-1]
  with open(path, "w") as f:
    json.dump(row, f)
  assert label_efficiency.finetune_and_score(args, 2, 4, "tico", "no_such_tico_dir") == row
