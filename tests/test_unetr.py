"""UNETR decoder on the ViT encoder: shapes, anisotropic upsampling, gradients, MAE transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_variables
from neuroseg_jax.errors import DataError
from neuroseg_jax.models import unetr, vit
from neuroseg_jax.models.mae import MAE
from neuroseg_jax.training import transfer


def test_upsampling_plan_follows_the_patch():
  assert unetr.upsampling_strides((1, 16, 16)) == [(1, 2, 2)] * 4
  assert unetr.upsampling_strides((4, 16, 16)) == [(2, 2, 2)] * 2 + [(1, 2, 2)] * 2
  assert unetr.upsampling_strides((2, 2, 8)) == [(2, 2, 2), (1, 1, 2), (1, 1, 2)]
  with pytest.raises(ValueError, match="power-of-two"):
    unetr.upsampling_strides((1, 12, 12))
  assert unetr.default_skip_blocks(12, 4) == (3, 6, 9)
  assert unetr.default_skip_blocks(24, 4) == (6, 12, 18)


def _variables(model, x, seed=0):
  return random_variables.fan_in_variables(lambda: model.init(jax.random.key(0), x), seed)


def _tiny(patch=(2, 4, 4), **kwargs):
  encoder = vit.ViTEncoder(width=16, depth=2, num_heads=2, patch_size=patch,
                           use_class_token=kwargs.pop("use_class_token", False))
  return unetr.UNETR(encoder, out_channels=3, decoder_width=4, **kwargs)


def test_forward_backward_jit_with_anisotropic_patches():
  model = _tiny(use_class_token=True)
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 1))
  variables = _variables(model, x)
  params, stats = variables["params"], variables["batch_stats"]
  assert set(params) >= {"encoder", "head"}
  assert params["encoder"]["patch_embed"]["kernel"].shape == (2, 4, 4, 1, 16)
  # Two up steps from the 2x2x2 token grid: (2, 2, 2) then in-plane (1, 2, 2).
  assert params["ConvTranspose_0"]["kernel"].shape == (2, 2, 2, 16, 8)
  assert params["ConvTranspose_1"]["kernel"].shape == (1, 2, 2, 8, 4)

  @jax.jit
  def step(params, stats):
    def loss_fn(p):
      y, new_state = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
      return jnp.mean((y - 1.0)**2), (y, new_state["batch_stats"])
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, (y, new_stats)), grads = step(params, stats)
  assert y.shape == (2, 4, 8, 8, 3) and y.dtype == jnp.float32
  assert np.isfinite(loss)
  for name in ("encoder", "head", "SkipProjection_0", "ConvBlock_0"):
    norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads[name])]
    assert all(np.isfinite(norms)) and sum(norms) > 0, name
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), stats, new_stats)
  assert max(jax.tree_util.tree_leaves(moved)) > 0  # batch_stats flow through train=True
  # Inference uses the running statistics: the same input gives the same output twice,
  # and one example's output does not depend on the rest of the batch.
  infer = jax.jit(model.apply)
  trained = {"params": params, "batch_stats": new_stats}
  y_eval, y_one = infer(trained, x), infer(trained, x[:1])
  np.testing.assert_allclose(y_one[0], y_eval[0], rtol=1e-4, atol=1e-5)


def test_dropping_the_position_embedding(monkeypatch):
  x = jax.random.normal(jax.random.key(2), (1, 2, 8, 8, 1))
  keep, drop = _tiny((1, 4, 4)), _tiny((1, 4, 4), use_position_embedding=False)
  variables = _variables(keep, x, seed=3)
  shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
  assert shapes(jax.eval_shape(drop.init, jax.random.key(3), x)) == shapes(variables)
  with_embedding = jax.jit(keep.apply)(variables, x)
  without = jax.jit(drop.apply)(variables, x)
  assert float(jnp.abs(with_embedding - without).max()) > 1e-4
  # The dropped path is exactly the encoder's own forward pass with a zero embedding.
  monkeypatch.setattr(vit, "sincos_position_embedding",
                      lambda grid, width: np.zeros((int(np.prod(grid)), width), np.float32))
  np.testing.assert_allclose(jax.jit(keep.apply)(variables, x), without, rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_settings():
  model = _tiny((1, 4, 4))
  with pytest.raises(DataError, match="tileable"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 6, 8, 1)))
  with pytest.raises(DataError, match="B, D, H, W, C"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="skip_blocks"):
    jax.eval_shape(_tiny((1, 4, 4), skip_blocks=(3,)).init, jax.random.key(0),
                   jnp.zeros((1, 2, 8, 8, 1)))


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def test_base_parameter_count():
  encoder = vit.ViTEncoder(width=768, depth=12, num_heads=12, patch_size=(1, 16, 16))
  model = unetr.UNETR(encoder, out_channels=3)
  x = jnp.zeros((1, 6, 96, 96, 1))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  assert _count(params["encoder"]) == _count(jax.eval_shape(encoder.init, jax.random.key(0), x))
  conv = lambda k, i, o: k * i * o          # no bias (followed by BatchNorm)
  norm = lambda c: 2 * c
  up = lambda k, i, o: k * i * o + o        # transposed conv with bias
  cnr = lambda i, o: conv(27, i, o) + norm(o)
  expected = cnr(1, 32) + cnr(32, 64)       # raw-input branch
  channels = {k: 64 * 2**k for k in range(4)}
  for k in (1, 2, 3):                       # skips from blocks 3, 6, 9 (4 - k up steps)
    c = channels[k]
    expected += up(4, 768, c) + cnr(c, c) + (3 - k) * (up(4, c, c) + cnr(c, c))
  previous = 768
  for k in (3, 2, 1, 0):                    # decoder: up, concat skip, two conv-norm-ReLU
    c = channels[k]
    expected += up(4, previous, c) + cnr(2 * c, c) + cnr(c, c)
    previous = c
  expected += 64 * 3 + 3                    # 1x1x1 head
  assert _count(params) - _count(params["encoder"]) == expected


def test_mae_encoder_transfers_into_unetr():
  # The MAE's params["encoder"] fills the UNETR encoder exactly through training/transfer.py,
  # which refuses any missing, mis-shaped or unexpected array.
  x = jnp.zeros((1, 2, 8, 8, 1))
  model = _tiny((1, 4, 4), use_class_token=True)
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
  mae = MAE(width=16, depth=2, num_heads=2, patch_size=(1, 4, 4), decoder_width=8,
            decoder_depth=1, decoder_num_heads=2)
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  mae_shapes = jax.eval_shape(mae.init, rngs, x)
  rng = np.random.default_rng(0)
  pretrained = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                      mae_shapes["params"]["encoder"])

  def load(encoder):
    loaded, count = transfer.copy_subtree({"params": params}, {"params": {"encoder": encoder}},
                                          "params/encoder", "params/encoder", "mae.ckpt")
    return loaded["params"], count

  loaded, count = load(pretrained)
  assert count == len(jax.tree_util.tree_leaves(pretrained))
  for got, want in zip(jax.tree_util.tree_leaves(loaded["encoder"]),
                       jax.tree_util.tree_leaves(pretrained)):
    np.testing.assert_array_equal(got, want)
  assert loaded["head"] is params["head"]
  with pytest.raises(transfer.TransferError, match=r"(?s)mae\.ckpt.*missing.*cls_token"):
    load({k: v for k, v in pretrained.items() if k != "cls_token"})
  wrong = dict(pretrained, norm={"scale": np.ones(8), "bias": np.ones(16)})
  with pytest.raises(transfer.TransferError, match=r"\['norm'\]\['scale'\]: model \(16,\) vs "
                     r"mae\.ckpt \(8,\)"):
    load(wrong)
  with pytest.raises(transfer.TransferError, match=r"not in model.*\['extra'\]"):
    load(dict(pretrained, extra={"w": np.ones(2)}))


def test_bfloat16_compute_keeps_float32_params_and_output():
  encoder = vit.ViTEncoder(width=16, depth=2, num_heads=2, patch_size=(1, 4, 4), dtype=jnp.bfloat16)
  model = unetr.UNETR(encoder, out_channels=2, decoder_width=4, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 2, 8, 8, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {np.dtype(np.float32)}
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (1, 2, 8, 8, 2) and out.dtype == jnp.float32
