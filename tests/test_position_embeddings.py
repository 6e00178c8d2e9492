"""Fixed sine-cosine position embeddings against an element-by-element reference."""

import itertools
import math

import numpy as np
import pytest

from neuroseg_jax.models.position_embeddings import sincos_1d, sincos_position_embedding


def _reference(grid_shape, width, temperature=10000.0):
  """One token and one channel at a time, straight from the documented formula."""
  ndim = len(grid_shape)
  share = 2 * (width // (2 * ndim))
  freqs = share // 2
  rows = []
  for position in itertools.product(*[range(g) for g in grid_shape]):
    row = [0.0] * width
    for axis, p in enumerate(position):
      for i in range(freqs):
        omega = 1.0 / temperature ** (i / freqs)
        row[axis * share + i] = math.sin(p * omega)
        row[axis * share + freqs + i] = math.cos(p * omega)
    rows.append(row)
  return np.array(rows)


@pytest.mark.parametrize("grid_shape, width", [((7,), 8), ((3, 5), 16), ((2, 3, 4), 24),
                                               ((6, 6, 6), 48), ((2, 2, 3), 20)])
def test_matches_reference(grid_shape, width):
  got = sincos_position_embedding(grid_shape, width)
  assert got.shape == (math.prod(grid_shape), width) and got.dtype == np.float32
  np.testing.assert_allclose(got, _reference(grid_shape, width), atol=1e-6)


def test_uneven_width_pads_with_zero_channels():
  # 3-D, width 20: 3 axes x 6 channels (3 frequencies) + 2 zero channels at the end.
  got = sincos_position_embedding((2, 3, 4), 20)
  np.testing.assert_array_equal(got[:, 18:], 0.0)
  assert np.all(np.abs(got[:, :18]).max(axis=0) > 0)


def test_hand_values():
  # Origin token: sines 0, cosines 1. Token (0, 1) of a 2-D grid, width 8: share 4,
  # frequencies 1 and 1/100; the x part is [sin 1, sin .01, cos 1, cos .01].
  emb = sincos_position_embedding((2, 2), 8)
  np.testing.assert_allclose(emb[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)
  np.testing.assert_allclose(emb[1], [0, 0, 1, 1, math.sin(1), math.sin(0.01), math.cos(1),
                                      math.cos(0.01)], atol=1e-7)
  # Row-major order: token 2 is (1, 0).
  np.testing.assert_allclose(emb[2, :4], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
                             atol=1e-7)


def test_distinct_rows_and_errors():
  emb = sincos_position_embedding((6, 6, 6), 96)
  assert len(np.unique(emb.round(5), axis=0)) == 216
  with pytest.raises(ValueError, match="even width"):
    sincos_1d(np.arange(3), 5)
  with pytest.raises(ValueError, match="need >= 2 channels per axis"):
    sincos_position_embedding((2, 2, 2), 4)
