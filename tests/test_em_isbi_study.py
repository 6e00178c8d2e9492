"""The ISBI study (`experiments/em_isbi_study.py`): MAE run folders, the table, resuming rows."""

import argparse
import json
import os
import sys

import pytest

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


def _study(tmp_path, monkeypatch, *flags, out=None):
  """Runs the study's main() in tmp_path (or `out`, naming it) on faked runs; returns the
  row specs it trained."""
  trained = []
  monkeypatch.setattr(em_isbi_study, "network_run", lambda method, labeled, seed, args: (
      "task", "state", "W", trained.append(em_isbi_study.run_spec(method, labeled, seed, args))
      or trained[-1]))
  monkeypatch.setattr(em_isbi_study, "pretrain", lambda args: {
      "method": "mae_pretraining", "mae_run": os.path.basename(em_isbi_study.mae_workdir(args)),
      "mask_ratio": args.mask_ratio, "val/reconstruction_loss": 0.5, "seconds": 1,
      "cpu_seconds": 1})
  monkeypatch.setattr(em_isbi_study.loop, "training_seconds", lambda workdir: 30.0)
  monkeypatch.setattr(sys, "argv", ["em_isbi_study", "--out", out or str(tmp_path),
                                    "--labels", "2", "--seeds", "0", *flags])
  em_isbi_study.main()
  return trained


def _rows(tmp_path):
  return json.loads((tmp_path / "em_isbi_study.json").read_text())


def _scores(*unused):
  return {"val/arand": 0.1, "val/voi_split": 0.1, "val/voi_merge": 0.2}


def test_tune_folds_completes_existing_rows_without_scoring_them_again(tmp_path, monkeypatch):
  monkeypatch.setattr(em_isbi_study.slice_runs, "slice_scores", _scores)
  _study(tmp_path, monkeypatch, "--methods", "unetr")
  oof_runs = []
  monkeypatch.setattr(em_isbi_study.slice_runs, "slice_scores", lambda *a: pytest.fail(
      "a finished row was scored again"))
  monkeypatch.setattr(em_isbi_study.slice_runs, "out_of_fold_scores",
                      lambda task, state, workdir, folds: oof_runs.append(folds) or
                      {"oof/arand": 0.07, "oof/folds": folds})
  for _ in range(2):  # the second call finds the row complete
    _study(tmp_path, monkeypatch, "--methods", "unetr", "--tune-folds", "2")
  row, = _rows(tmp_path)
  assert oof_runs == [2]
  assert row["oof/arand"] == 0.07 and row["val/arand"] == 0.1 and row["train_seconds"] == 30
  assert row["oof/seconds"] >= 0


def test_rows_of_another_mask_ratio_are_new_rows_not_the_old_ones(tmp_path, monkeypatch):
  monkeypatch.setattr(em_isbi_study.slice_runs, "slice_scores", _scores)
  first = _study(tmp_path, monkeypatch, "--methods", "unetr_mae")
  assert _study(tmp_path, monkeypatch, "--methods", "unetr_mae") == []  # finished: reused
  monkeypatch.chdir(tmp_path.parent)  # the same folder by a relative path: reused too
  assert _study(tmp_path, monkeypatch, "--methods", "unetr_mae", out=tmp_path.name) == []
  second = _study(tmp_path, monkeypatch, "--methods", "unetr_mae", "--mask-ratio", "0.25")
  assert len(first) == len(second) == 1
  assert "ratio_0.75," in first[0] and "ratio_0.25," in second[0]
  rows = _rows(tmp_path)
  assert [r.get("mae_run") for r in rows if r["method"] == "mae_pretraining"] == [
      "ratio_0.75", "ratio_0.25"]
  assert len([r for r in rows if r["method"] == "unetr_mae"]) == 2
  lines = em_isbi_study.table(rows, match_noise=True).splitlines()
  assert [line.split("|")[1].strip() for line in lines[2:]] == [
      "unetr_mae (ratio_0.25)", "unetr_mae (ratio_0.75)"]
