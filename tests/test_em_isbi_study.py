"""Run-folder names of the ISBI study's MAE variants (`experiments/em_isbi_study.py`)."""

import argparse
import os

from experiments import em_isbi_study


def args(**overrides):
  values = dict(out="W", mask_ratio=0.75, patch_size=em_isbi_study.PATCH, mae_steps=0,
                mae_match_noise=False)
  return argparse.Namespace(**{**values, **overrides})


def test_default_mae_folder_is_the_masking_ratio_study_one():
  assert em_isbi_study.mae_workdir(args()) == os.path.join("W", "ratio_0.75")


def test_each_varied_setting_gets_its_own_folder():
  names = {em_isbi_study.mae_workdir(args(**change)) for change in
           ({}, {"patch_size": "8x8"}, {"mae_steps": 4500},
            {"patch_size": "8x8", "mae_steps": 4500}, {"mask_ratio": 0.5},
            {"mae_match_noise": True})}
  assert len(names) == 6
  assert em_isbi_study.mae_workdir(args(patch_size="8x8", mae_steps=4500)) == os.path.join(
      "W", "ratio_0.75_patch8x8_steps4500")


def _row(method, seed, arand, oof=None):
  row = {"method": method, "labeled": 2, "seed": seed, "match_noise": True, "val/arand": arand,
         "val/voi_split": 0.1, "val/voi_merge": 0.2, "val/arand_oracle": 0.05, "seconds": 60,
         "cpu_seconds": 120}
  return {**row, "oof/arand": oof} if oof is not None else row


def test_table_reports_out_of_fold_scores_only_where_every_seed_has_them():
  rows = [_row("unetr", 0, 0.1, oof=0.08), _row("unetr", 1, 0.2, oof=0.12),
          _row("unetr_mae", 0, 0.1, oof=0.07), _row("unetr_mae", 1, 0.1)]
  lines = em_isbi_study.table(rows, match_noise=True).splitlines()
  assert "tuned out of fold" in lines[0]
  unetr, = [line for line in lines if line.startswith("| unetr |")]
  assert "| 0.1000 +- 0.0200 |" in unetr  # out of fold: mean +- sd of 0.08 and 0.12
  mae, = [line for line in lines if line.startswith("| unetr_mae |")]
  assert mae.split("|")[7].strip() == "-"  # one seed lacks it: no mean of a subset
