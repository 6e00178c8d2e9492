"""The watershed selection rules of experiments/em_tuning_rules.py."""

import dataclasses

from experiments import em_tuning_rules as rules
from neuroseg_jax.evaluation.slice_segmentation import WatershedGrid, WatershedParams

GRID = WatershedGrid(seed_threshold=(0.2, 0.4), min_seed_size=(8, 32, 128), smoothing=(0.0, 1.0),
                     seed_erosion=(0.0, 2.0))
SIMPLE_02, SIMPLE_04 = WatershedParams(0.2, 32, 0.0, 0.0), WatershedParams(0.4, 32, 0.0, 0.0)
SMOOTH = WatershedParams(0.2, 32, 1.0, 0.0)
MEANS = {"in_sample": {SIMPLE_02: 0.30, SIMPLE_04: 0.20, SMOOTH: 0.10},
         "out_of_fold": {SIMPLE_02: 0.10, SIMPLE_04: 0.25, SMOOTH: 0.35}}


def test_rules_pick_by_their_sources_and_candidates():
  picks = {rule.name: rules.choose(rule, MEANS, GRID) for rule in rules.ABSOLUTE_RULES}
  assert picks == {"in-sample": SMOOTH, "out of fold": SIMPLE_02,
                   "in-sample + out of fold": SIMPLE_02,  # 0.40 against 0.45 and 0.45
                   "in-sample, threshold only": SIMPLE_04,
                   "out of fold, threshold only": SIMPLE_02}
  assert rules.simplest(SIMPLE_04, GRID) and not rules.simplest(SMOOTH, GRID)
  assert not rules.simplest(WatershedParams(0.2, 8, 0.0, 0.0), GRID)


def test_table_gives_mean_and_per_seed_values_per_rule():
  names = [rule.name for rule in rules.ABSOLUTE_RULES] + ["oracle"]
  results = {"unetr:5:0": dict.fromkeys(names, 0.1), "unetr:5:1": dict.fromkeys(names, 0.3),
             "unetr_mae:5:0": dict.fromkeys(names, 0.2)}
  lines = rules.table(results).splitlines()
  assert len(lines) == 4 and lines[2].startswith("| unetr | 5 | 0.2000 (0.100, 0.300) |")
  assert lines[3].startswith("| unetr_mae | 5 | 0.2000 (0.200) |")


def test_quantile_rules_choose_among_quantile_thresholds_only():
  grid = dataclasses.replace(GRID, seed_quantile=(0.5, 0.7))
  by_share, by_share_smooth = (WatershedParams(0.0, 32, 0.0, 0.0, seed_quantile=0.5),
                               WatershedParams(0.0, 32, 1.0, 0.0, seed_quantile=0.7))
  means = {"in_sample": {**MEANS["in_sample"], by_share: 0.15, by_share_smooth: 0.05},
           "out_of_fold": {**MEANS["out_of_fold"], by_share: 0.20, by_share_smooth: 0.30}}
  assert [r.name for r in rules.rules_for(GRID)] == [r.name for r in rules.ABSOLUTE_RULES]
  picks = {rule.name: rules.choose(rule, means, grid) for rule in rules.rules_for(grid)}
  assert picks["in-sample"] == SMOOTH and picks["out of fold"] == SIMPLE_02  # unchanged
  assert picks["in-sample, quantile"] == by_share_smooth
  assert picks["out of fold, quantile"] == by_share
  assert picks["out of fold, threshold only, quantile"] == by_share


def test_table_keeps_the_columns_every_row_has():
  results = {"unetr:2:0": {"in-sample": 0.1, "oracle": 0.05, "oracle, quantile": 0.04},
             "unetr:2:1": {"in-sample": 0.3, "oracle": 0.07}}
  lines = rules.table(results).splitlines()
  assert lines[0] == "| method | labeled | in-sample | oracle |"
  assert lines[2] == "| unetr | 2 | 0.2000 (0.100, 0.300) | 0.0600 (0.050, 0.070) |"
