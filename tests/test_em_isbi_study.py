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
