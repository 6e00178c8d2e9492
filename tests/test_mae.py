"""MAE: shuffle-and-keep masking, patchify layout, encoder on visible patches, jit training."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import random_variables
from neuroseg_jax.errors import DataError
from neuroseg_jax.losses.reconstruction import masked_reconstruction_loss
from neuroseg_jax.models.mae import (MAE, num_visible_tokens, patchify, random_masking,
                                     unpatchify)
from neuroseg_jax.models.vit import ViTEncoder


def _tiny_mae(patch, mask_ratio=0.75, **kw):
  return MAE(width=16, depth=1, num_heads=2, patch_size=patch, decoder_width=8, decoder_depth=1,
             decoder_num_heads=2, mask_ratio=mask_ratio, **kw)


def _numpy_variables(model, x, seed=0):
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  return random_variables.normal_variables(lambda: model.init(rngs, x), seed)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_masking_keeps_round_share_and_restores_order(ratio):
  batch, n = 4, 216
  kept = int(round((1 - ratio) * n))
  assert num_visible_tokens(n, ratio) == kept
  keep, mask, ids_restore = jax.jit(random_masking, static_argnums=(1, 2, 3))(
      jax.random.key(0), batch, n, ratio)
  keep, mask, ids_restore = map(np.asarray, (keep, mask, ids_restore))
  assert keep.shape == (batch, kept) and mask.shape == ids_restore.shape == (batch, n)
  np.testing.assert_array_equal(mask.sum(1), n - kept)
  for b in range(batch):
    assert len(set(keep[b])) == kept
    np.testing.assert_array_equal(np.sort(ids_restore[b]), np.arange(n))  # a permutation
    np.testing.assert_array_equal(mask[b, keep[b]], 0)                      # kept = visible
    # Unshuffling [visible tokens, placeholders] puts every visible token back in place.
    tokens = np.arange(n) * 10
    shuffled = np.concatenate([tokens[keep[b]], -np.ones(n - kept, int)])
    restored = shuffled[ids_restore[b]]
    np.testing.assert_array_equal(restored[mask[b] == 0], tokens[mask[b] == 0])
    np.testing.assert_array_equal(restored[mask[b] == 1], -1)


def test_masks_differ_per_example_and_per_step():
  masking = jax.jit(random_masking, static_argnums=(1, 2, 3))
  _, mask_a, _ = masking(jax.random.key(0), 8, 216, 0.75)
  _, mask_b, _ = masking(jax.random.key(1), 8, 216, 0.75)
  _, mask_a2, _ = masking(jax.random.key(0), 8, 216, 0.75)
  assert len({tuple(row) for row in np.asarray(mask_a)}) == 8
  assert np.any(np.asarray(mask_a) != np.asarray(mask_b), axis=1).all()
  np.testing.assert_array_equal(mask_a, mask_a2)
  # Every token is masked about 75 % of the time across many examples.
  _, many, _ = masking(jax.random.key(2), 512, 216, 0.75)
  assert np.abs(np.asarray(many).mean(0) - 0.75).max() < 0.1


@pytest.mark.parametrize("patch, spatial", [((2, 3), (4, 9)), ((2, 2, 3), (4, 2, 6))])
def test_patchify_layout_and_round_trip(patch, spatial):
  x = np.random.default_rng(0).normal(size=(2, *spatial, 2)).astype(np.float32)
  patches = np.asarray(patchify(x, patch))
  grid = [s // p for s, p in zip(spatial, patch)]
  assert patches.shape == (2, int(np.prod(grid)), int(np.prod(patch)) * 2)
  for token, cell in enumerate(itertools.product(*[range(g) for g in grid])):  # row-major
    window = tuple(slice(c * p, (c + 1) * p) for c, p in zip(cell, patch))
    np.testing.assert_array_equal(patches[1, token], x[(1, *window)].reshape(-1))
  np.testing.assert_array_equal(unpatchify(patches, grid, patch), x)


def test_encoder_sees_visible_patches_only():
  model = _tiny_mae((1, 4, 4), mask_ratio=0.5)
  x = np.random.default_rng(1).normal(size=(2, 2, 8, 8, 1)).astype(np.float32)
  variables = _numpy_variables(model, x)
  apply = jax.jit(lambda x, rng: model.apply(variables, x, rngs={"masking": rng}))
  out = apply(x, jax.random.key(7))
  assert out.prediction.shape == (2, 8, 16) and out.prediction.dtype == jnp.float32
  mask = np.asarray(out.mask)
  np.testing.assert_array_equal(mask.sum(1), 4)
  patches = np.asarray(patchify(x, (1, 4, 4)))
  noise = np.random.default_rng(2).normal(size=patches.shape).astype(np.float32)
  changed_masked = unpatchify(patches + noise * mask[..., None], (2, 2, 2), (1, 4, 4))
  np.testing.assert_allclose(apply(changed_masked, jax.random.key(7)).prediction, out.prediction,
                             atol=1e-6)
  changed_visible = unpatchify(patches + noise * (1 - mask[..., None]), (2, 2, 2), (1, 4, 4))
  assert np.abs(apply(changed_visible, jax.random.key(7)).prediction - out.prediction).max() > 1e-3
  other = apply(x, jax.random.key(8))
  assert np.any(np.asarray(other.mask) != mask)


def test_encoder_params_are_a_vit_encoder():
  model = _tiny_mae((1, 4, 4))
  x = jnp.zeros((1, 2, 8, 8, 1))
  params = _numpy_variables(model, x)["params"]
  assert set(params) == {"encoder", "decoder_embed", "mask_token", "decoder_blocks_0",
                         "decoder_norm", "decoder_pred"}
  vit = ViTEncoder(width=16, depth=1, num_heads=2, patch_size=(1, 4, 4), use_class_token=True)
  vit_shapes = jax.eval_shape(vit.init, jax.random.key(0), x)["params"]
  assert jax.tree.map(np.shape, params["encoder"]) == jax.tree.map(np.shape, vit_shapes)
  assert params["decoder_pred"]["kernel"].shape == (8, 16)


def test_bad_inputs():
  model = _tiny_mae((1, 4, 4))
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  with pytest.raises(DataError, match="expected 1 channel"):
    jax.eval_shape(model.init, rngs, jnp.zeros((1, 2, 8, 8, 3)))
  with pytest.raises(DataError, match="not tileable"):
    jax.eval_shape(model.init, rngs, jnp.zeros((1, 2, 8, 6, 1)))
  with pytest.raises(ValueError, match="mask_ratio must be in"):
    num_visible_tokens(216, 1.0)
  with pytest.raises(ValueError, match="leaves no visible token"):
    num_visible_tokens(8, 0.95)


def test_jit_forward_backward_2d():
  model = _tiny_mae((4, 4), use_class_token=False)
  x = np.random.default_rng(3).uniform(size=(2, 8, 12, 1)).astype(np.float32)
  params = _numpy_variables(model, x)["params"]

  def loss_fn(p):
    out = model.apply({"params": p}, x, rngs={"masking": jax.random.key(0)})
    return masked_reconstruction_loss(out.prediction, patchify(x, (4, 4)), out.mask)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert np.isfinite(float(loss)) and "cls_token" not in params["encoder"]
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def test_jit_training_3d_lowers_the_masked_loss():
  patch, shape = (1, 4, 4), (2, 2, 8, 8, 1)
  model = _tiny_mae(patch)
  x = np.random.default_rng(3).uniform(size=shape).astype(np.float32)
  params = _numpy_variables(model, x)["params"]
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      out = model.apply({"params": p}, x, rngs={"masking": jax.random.key(0)})
      return masked_reconstruction_loss(out.prediction, patchify(x, patch), out.mask,
                                        norm_pix=False)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  opt_state = tx.init(params)
  params, opt_state, first_loss, grads = step(params, opt_state)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path
  for _ in range(30):
    params, opt_state, loss, _ = step(params, opt_state)
  assert float(loss) < 0.5 * float(first_loss)
