"""Loading pre-trained subtrees: counted, and loud on any mismatch."""

import numpy as np
import pytest

from neuroseg_jax.training import transfer


def _tree(width=3):
  return {"params": {"backbone": {"conv": {"kernel": np.ones((2, width))},
                                  "bn": {"scale": np.ones(width)}},
                     "head": {"kernel": np.zeros((width, 1))}}}


def test_copy_counts_and_copies_only_the_subtree():
  source = {"params": {"encoder": {"conv": {"kernel": np.full((2, 3), 5.0)},
                                   "bn": {"scale": np.full(3, 7.0)}}}}
  out, count = transfer.copy_subtree(_tree(), source, "params/backbone", "params/encoder")
  assert count == 2
  np.testing.assert_array_equal(out["params"]["backbone"]["conv"]["kernel"], 5.0)
  np.testing.assert_array_equal(out["params"]["backbone"]["bn"]["scale"], 7.0)
  np.testing.assert_array_equal(out["params"]["head"]["kernel"], 0.0)


def test_mismatched_trees_fail_with_the_differences():
  source = {"params": {"encoder": {"conv": {"kernel": np.ones((2, 4))},
                                   "extra": {"w": np.ones(1)}}}}
  with pytest.raises(transfer.TransferError) as error:
    transfer.copy_subtree(_tree(), source, "params/backbone", "params/encoder")
  message = str(error.value)
  assert "missing from checkpoint (1): ['bn']['scale']" in message
  assert "not in model (1): ['extra']['w']" in message
  assert "shape mismatch (1): ['conv']['kernel']: model (2, 3) vs checkpoint (2, 4)" in message


def test_missing_subtree_is_named():
  with pytest.raises(transfer.TransferError, match="no subtree 'params/encoder'.*backbone"):
    transfer.copy_subtree(_tree(), _tree(), "params/backbone", "params/encoder")
