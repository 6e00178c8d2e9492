"""Dense segmentation losses against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax.losses import segmentation as seg

SHAPE = (2, 3, 4, 5, 3)  # [B, D, H, W, C]


def _data(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, SHAPE).astype(np.float32)
  targets = (rng.random(SHAPE) < 0.3).astype(np.float32)
  voxel_weights = rng.random(SHAPE[:-1] + (1,)).astype(np.float32)
  return logits, targets, voxel_weights


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _np_bce(logits, targets, weights):
  p = _sigmoid(logits)
  return np.mean(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)) * weights)


def _np_dice(logits, targets, weights, channel_weights, smooth=1.0):
  p = _sigmoid(logits)
  axes = (0, 1, 2, 3)
  dice = (2 * (weights * p * targets).sum(axes) + smooth) / (
      (weights * p).sum(axes) + (weights * targets).sum(axes) + smooth)
  return np.sum(channel_weights * (1 - dice)) / np.sum(channel_weights)


def test_weighted_bce_matches_numpy():
  logits, targets, voxel_weights = _data()
  channel_weights = np.array([1.0, 2.0, 0.5], np.float32)
  got = seg.weighted_bce_with_logits(logits, targets, channel_weights, voxel_weights)
  want = _np_bce(logits, targets, channel_weights * voxel_weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(seg.weighted_bce_with_logits(logits, targets),
                             _np_bce(logits, targets, 1.0), rtol=1e-5)


def test_bce_is_stable_for_extreme_logits():
  logits = jnp.array([[-200.0, 200.0, 0.0]])
  targets = jnp.array([[0.0, 1.0, 1.0]])
  np.testing.assert_allclose(seg.weighted_bce_with_logits(logits, targets), np.log(2) / 3,
                             rtol=1e-6)
  np.testing.assert_allclose(seg.weighted_bce_with_logits(logits, 1 - targets),
                             (400 + np.log(2)) / 3, rtol=1e-6)


def test_soft_dice_matches_numpy():
  logits, targets, voxel_weights = _data(1)
  channel_weights = np.array([1.0, 0.0, 3.0], np.float32)
  got = seg.soft_dice_loss(logits, targets, channel_weights, voxel_weights)
  np.testing.assert_allclose(got, _np_dice(logits, targets, voxel_weights, channel_weights),
                             rtol=1e-5)
  perfect = seg.soft_dice_loss(np.where(targets > 0, 50.0, -50.0), targets, smooth=0.0)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-6)


def test_bce_dice_combination_and_mask():
  logits, targets, voxel_weights = _data(2)
  mask = np.ones(SHAPE, np.float32)
  mask[:, 0, ..., 0] = 0.0  # e.g. z-affinities of the first plane
  loss, terms = seg.bce_dice_loss(logits, targets, bce_weight=1.0, dice_weight=0.5,
                                  voxel_weights=voxel_weights, mask=mask)
  bce = _np_bce(logits, targets, voxel_weights * mask)
  dice = _np_dice(logits, targets, mask, np.ones(3))
  np.testing.assert_allclose(terms["bce"], bce, rtol=1e-5)
  np.testing.assert_allclose(terms["dice"], dice, rtol=1e-5)
  np.testing.assert_allclose(loss, bce + 0.5 * dice, rtol=1e-5)
  # Masked elements do not matter.
  changed = logits.copy()
  changed[:, 0, ..., 0] = 99.0
  np.testing.assert_allclose(seg.bce_dice_loss(changed, targets, voxel_weights=voxel_weights,
                                               mask=mask)[0], loss, rtol=1e-6)


def test_balanced_weights_give_each_class_half():
  _, targets, _ = _data(3)
  weights = np.asarray(seg.balanced_voxel_weights(targets))
  for b in range(SHAPE[0]):
    for c in range(SHAPE[-1]):
      t, w = targets[b, ..., c], weights[b, ..., c]
      p = t.mean()
      np.testing.assert_allclose(w[t > 0], 0.5 / p, rtol=1e-5)
      np.testing.assert_allclose(w[t == 0], 0.5 / (1 - p), rtol=1e-5)
      np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-5)


def test_weighted_mse_tanh_matches_numpy():
  logits, _, voxel_weights = _data(4)
  targets = np.random.default_rng(5).uniform(-1, 1, SHAPE).astype(np.float32)
  got = seg.weighted_mse_tanh(logits, targets, voxel_weights)
  want = np.mean((np.tanh(logits.astype(np.float64)) - targets)**2 * voxel_weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_losses_jit_and_differentiate():
  logits, targets, voxel_weights = _data(6)

  def total(x):
    loss, _ = seg.bce_dice_loss(x, targets, voxel_weights=seg.balanced_voxel_weights(targets))
    return loss + seg.weighted_mse_tanh(x, targets * 2 - 1)

  value, grad = jax.jit(jax.value_and_grad(total))(jnp.asarray(logits, jnp.bfloat16))
  assert value.dtype == jnp.float32 and np.isfinite(value)
  assert grad.shape == SHAPE and np.all(np.isfinite(np.asarray(grad, np.float32)))
  # Gradient of the BCE part alone against the analytic (sigmoid - t) * w / N.
  g = jax.grad(lambda x: seg.weighted_bce_with_logits(x, targets, None, voxel_weights))(logits)
  np.testing.assert_allclose(g, (_sigmoid(logits) - targets) * voxel_weights / logits.size,
                             rtol=1e-4, atol=1e-9)
