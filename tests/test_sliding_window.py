"""Whole-volume inference: windows, blending, reflect padding, flip TTA and streaming."""

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax.data.affinities import NEAREST_NEIGHBOUR_OFFSETS, affinities_from_labels
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import sliding_window as sw


def test_window_starts_cover_the_axis():
  assert sw.window_starts(10, 4, 3) == [0, 3, 6]
  assert sw.window_starts(10, 4, 4) == [0, 4, 6]
  assert sw.window_starts(4, 4, 2) == [0]


@pytest.mark.parametrize("pad", [(0, 0, 0), (1, 2, 3), (4, 5, 7)])
def test_read_window_equals_numpy_reflect_padding(pad):
  volume = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
  padded = np.pad(volume, [(p, p) for p in pad] + [(0, 0)], mode="reflect")
  rng = np.random.default_rng(0)
  window = (2, 3, 4)
  for _ in range(10):
    start = [int(rng.integers(0, n - w + 1)) for n, w in zip(padded.shape, window)]
    want = padded[tuple(slice(s, s + w) for s, w in zip(start, window))]
    np.testing.assert_array_equal(sw.read_window(volume, start, window, pad), want)


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_blending_weights(kind):
  weights = sw.blending_weights((1, 6, 7), kind)
  assert weights.shape == (1, 6, 7) and weights.dtype == np.float32
  np.testing.assert_allclose(weights, weights[:, ::-1, ::-1])  # symmetric
  assert weights.max() == pytest.approx(1.0, abs=0.1) and weights.min() >= sw.MIN_WEIGHT
  assert weights[0, 3, 3] > weights[0, 0, 3] > weights[0, 0, 0]


class _TinyConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3, 3))(x))
    return nn.Conv(2, (1, 3, 3))(x)


def _conv_net_predict(seed):
  """Jitted [B, d, h, w, 1] -> [B, d, h, w, 2] conv net with random weights (drawn in NumPy)."""
  model, rng = _TinyConvNet(), np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 4, 1)))
  params = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  return jax.jit(lambda batch: model.apply(params, batch))


def test_single_window_reproduces_the_direct_forward_pass():
  volume = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype(np.float32)
  predict = _conv_net_predict(0)
  direct = np.asarray(predict(volume[None]))[0]
  got = sw.sliding_window_predict(volume, predict, (4, 8, 8), (2, 4, 4), num_outputs=2)
  np.testing.assert_allclose(got, direct, rtol=1e-6, atol=1e-6)


def _pointwise(batch):
  return np.concatenate([np.tanh(batch), 2 * batch + 1], axis=-1)


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_overlapping_windows_blend_a_pointwise_model_exactly(blend):
  volume = np.random.default_rng(2).normal(size=(7, 11, 13)).astype(np.float32)
  got = sw.sliding_window_predict(volume, _pointwise, (3, 4, 6), (2, 3, 4), num_outputs=2,
                                  padding=(1, 2, 3), batch_size=3, blend=blend)
  np.testing.assert_allclose(got, _pointwise(volume[..., None]), rtol=1e-5, atol=1e-6)


def _affinity_oracle(batch):
  """Window-local affinities of the labels stored as intensities: [B, d, h, w, 1] -> [..., 3]."""
  return np.stack([affinities_from_labels(w[..., 0].astype(np.int32)) for w in batch])


def _labels():
  rng = np.random.default_rng(3)
  return rng.integers(0, 4, (6, 9, 10)).repeat(2, axis=2).astype(np.float32)


def test_flip_tta_shifts_affinities_back():
  labels = _labels()
  kwargs = dict(window=(3, 5, 8), stride=(2, 3, 5), num_outputs=3, padding=(1, 2, 2))
  plain = sw.sliding_window_predict(labels, _affinity_oracle, **kwargs)
  flipped = sw.sliding_window_predict(labels, _affinity_oracle, flip_axes=(0, 1, 2),
                                      channel_offsets=NEAREST_NEIGHBOUR_OFFSETS, **kwargs)
  np.testing.assert_allclose(flipped, plain, atol=1e-6)
  # Without the shift, flipped affinities land one voxel off.
  naive = sw.sliding_window_predict(labels, _affinity_oracle, flip_axes=(2,), **kwargs)
  assert np.abs(naive[..., 2] - plain[..., 2]).max() > 0.2
  np.testing.assert_allclose(naive[..., :2], plain[..., :2], atol=1e-6)  # x flips leave z, y


def test_flip_tta_averages_flips_of_a_model():
  volume = np.random.default_rng(4).normal(size=(4, 6, 6, 1)).astype(np.float32)

  def asymmetric(batch):
    return np.cumsum(batch, axis=3)  # depends on the x direction

  got = sw.sliding_window_predict(volume, asymmetric, (4, 6, 6), (4, 6, 6), num_outputs=1,
                                  flip_axes=(2,))
  want = (np.cumsum(volume, axis=2) + np.cumsum(volume[:, :, ::-1], axis=2)[:, :, ::-1]) / 2
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_streamed_inference_equals_in_memory(tmp_path):
  volume = np.random.default_rng(5).normal(size=(9, 10, 12)).astype(np.float32)
  source = np.lib.format.open_memmap(tmp_path / "raw.npy", mode="w+", dtype=np.float32,
                                     shape=volume.shape)
  source[:] = volume
  source.flush()
  lazy = np.load(tmp_path / "raw.npy", mmap_mode="r")
  predict = _conv_net_predict(1)
  kwargs = dict(window=(3, 6, 6), stride=(2, 4, 4), num_outputs=2, padding=(1, 2, 2),
                batch_size=2, flip_axes=(1, 2))
  in_memory = sw.sliding_window_predict(volume, predict, **kwargs)
  out = np.lib.format.open_memmap(tmp_path / "pred.npy", mode="w+", dtype=np.float32,
                                  shape=(9, 10, 12, 2))
  streamed = sw.sliding_window_predict(lazy, predict, out=out, **kwargs)
  assert streamed is out
  out.flush()
  np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), in_memory)
  with h5py.File(tmp_path / "pred.h5", "w") as f:
    dataset = f.create_dataset("pred", shape=(9, 10, 12, 2), dtype=np.float32)
    sw.sliding_window_predict(lazy, predict, out=dataset, **kwargs)
    np.testing.assert_array_equal(dataset[...], in_memory)


def test_bad_arguments_raise_data_error():
  volume = np.zeros((4, 4, 4), np.float32)
  with pytest.raises(DataError, match="output"):
    sw.sliding_window_predict(volume, _pointwise, (2, 2, 2), (1, 1, 1), num_outputs=2,
                              out=np.zeros((4, 4, 4, 3), np.float32))
  with pytest.raises(DataError, match="D, H, W"):
    sw.sliding_window_predict(volume[0], _pointwise, (2, 2, 2), (1, 1, 1), num_outputs=2)
  with pytest.raises(DataError, match="stride <= window"):
    sw.sliding_window_predict(volume, _pointwise, (2, 2, 2), (1, 3, 1), num_outputs=2)
  with pytest.raises(DataError, match="channel_offsets"):
    sw.sliding_window_predict(volume, _pointwise, (2, 2, 2), (1, 1, 1), num_outputs=2,
                              channel_offsets=[(0, 0, -1)])
