"""z-slice lists written as text (`data/slice_ranges.py`)."""

import pytest

from neuroseg_jax.data.slice_ranges import fold_splits, parse_slices, slices_text
from neuroseg_jax.errors import ConfigError


def test_slice_lists_parse_and_reject_out_of_range():
  assert parse_slices("0-3+7", 10, "f") == [0, 1, 2, 3, 7]
  with pytest.raises(ConfigError, match="data.train_slices: .*not inside"):
    parse_slices("5-12", 10, "data.train_slices")
  with pytest.raises(ConfigError, match="written like"):
    parse_slices("a-b", 10, "data.train_slices")


def test_slice_text_round_trips_through_the_parser():
  indices = [0, 1, 2, 5, 7, 8]
  assert slices_text(indices) == "0-2+5+7-8"
  assert parse_slices(slices_text(indices), 9, "f") == indices


def test_fold_splits_are_contiguous_and_cover_every_slice_once():
  splits = fold_splits([0, 1, 2, 5, 7], 2)
  assert splits == [([0, 1, 2], [5, 7]), ([5, 7], [0, 1, 2])]
  assert fold_splits([3, 4], 2) == [([3], [4]), ([4], [3])]
