"""Masked reconstruction loss, norm-pix targets and the predict-the-mean baseline vs NumPy."""

import numpy as np
import pytest

from neuroseg_jax.losses.reconstruction import (denormalize_prediction, masked_reconstruction_loss,
                                                predict_the_mean_loss, reconstruction_targets)


def _data(seed=0, b=2, n=6, p=8):
  rng = np.random.default_rng(seed)
  patches = rng.uniform(size=(b, n, p)).astype(np.float32) * rng.uniform(0.5, 3, size=(b, n, 1))
  prediction = rng.normal(size=(b, n, p)).astype(np.float32)
  mask = np.zeros((b, n), np.float32)
  mask[0, [1, 4]] = 1
  mask[1, [0, 2, 5]] = 1
  return patches, prediction, mask


def _numpy_loss(prediction, targets, mask):
  per_patch = ((prediction - targets) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_matches_numpy(norm_pix):
  patches, prediction, mask = _data()
  targets = patches
  if norm_pix:
    std = np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
    targets = (patches - patches.mean(-1, keepdims=True)) / std
  got = masked_reconstruction_loss(prediction, patches, mask, norm_pix)
  np.testing.assert_allclose(got, _numpy_loss(prediction, targets, mask), rtol=1e-5)


def test_hand_computed_value():
  patches = np.array([[[0.0, 2.0], [1.0, 1.0], [4.0, 0.0]]])
  prediction = np.array([[[1.0, 1.0], [9.0, 9.0], [2.0, 2.0]]])
  mask = np.array([[1.0, 0.0, 1.0]])
  # Patch 0: ((1-0)^2 + (1-2)^2) / 2 = 1; patch 2: (4 + 4) / 2 = 4; patch 1 is visible.
  loss = masked_reconstruction_loss(prediction, patches, mask, norm_pix=False)
  assert float(loss) == pytest.approx(2.5)


def test_visible_patches_do_not_count():
  patches, prediction, mask = _data(1)
  changed = prediction + 5.0 * (1 - mask[..., None])
  for norm_pix in (False, True):
    base = float(masked_reconstruction_loss(prediction, patches, mask, norm_pix))
    changed_loss = float(masked_reconstruction_loss(changed, patches, mask, norm_pix))
    assert changed_loss == pytest.approx(base, rel=1e-6)
    moved = prediction + 0.5 * mask[..., None]
    assert abs(float(masked_reconstruction_loss(moved, patches, mask, norm_pix)) - base) > 1e-3
  assert float(masked_reconstruction_loss(prediction, patches, np.zeros_like(mask))) == 0.0


def test_norm_pix_targets_and_inverse():
  patches, _, _ = _data(2)
  targets = np.asarray(reconstruction_targets(patches, norm_pix=True))
  np.testing.assert_allclose(targets.mean(-1), 0, atol=1e-5)
  var = patches.var(-1)
  np.testing.assert_allclose(targets.var(-1), var / (var + 1e-6), rtol=1e-4)
  np.testing.assert_allclose(denormalize_prediction(targets, patches, True), patches,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(denormalize_prediction(targets, patches, False), targets)
  constant = np.full((1, 1, 4), 3.0, np.float32)
  np.testing.assert_array_equal(reconstruction_targets(constant, True), 0.0)  # no division by 0


def test_predict_the_mean_baseline():
  patches, _, mask = _data(3)
  var = patches.var(-1)
  expected_norm = ((var / (var + 1e-6)) * mask).sum() / mask.sum()
  np.testing.assert_allclose(predict_the_mean_loss(patches, mask, norm_pix=True), expected_norm,
                             rtol=1e-5)
  mean = patches.mean()
  np.testing.assert_allclose(predict_the_mean_loss(patches, mask, norm_pix=False),
                             _numpy_loss(np.full_like(patches, mean), patches, mask), rtol=1e-5)
  np.testing.assert_allclose(predict_the_mean_loss(patches, mask, norm_pix=False, data_mean=0.25),
                             _numpy_loss(np.full_like(patches, 0.25), patches, mask), rtol=1e-5)
