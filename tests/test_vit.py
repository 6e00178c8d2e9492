"""ViTEncoder: patch tokens, position embedding (on / off), token selection, sizes, jit fwd/bwd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_variables
from neuroseg_jax.errors import DataError
from neuroseg_jax.models.mae import patchify
from neuroseg_jax.models.position_embeddings import sincos_position_embedding
from neuroseg_jax.models.vit import VIT_SIZES, ViTEncoder


def _tiny(patch, cls=False, depth=1, **kw):
  return ViTEncoder(width=16, depth=depth, num_heads=2, patch_size=patch, use_class_token=cls, **kw)


def _numpy_variables(model, x, seed=0):
  return random_variables.normal_variables(lambda: model.init(jax.random.key(0), x), seed)


@pytest.mark.parametrize("patch, shape", [((4, 4), (2, 8, 12, 3)), ((2, 4, 4), (2, 4, 8, 12, 1))])
def test_embed_is_patch_matmul_plus_sincos(patch, shape):
  model = _tiny(patch)
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  variables = _numpy_variables(model, x)
  tokens = jax.jit(lambda v: model.apply(v, x, method="embed"))(variables)
  grid = model.grid_shape(shape[1:-1])
  assert tokens.shape == (shape[0], int(np.prod(grid)), 16)
  conv = variables["params"]["patch_embed"]
  kernel = np.asarray(conv["kernel"]).reshape(-1, 16)  # [(p..., C), width], patchify's layout
  expected = (np.asarray(patchify(x, patch)) @ kernel + np.asarray(conv["bias"])
              + sincos_position_embedding(grid, 16))
  np.testing.assert_allclose(tokens, expected, rtol=1e-4, atol=1e-4)
  bare = jax.jit(lambda v: model.apply(v, x, position_embedding=False, method="embed"))(variables)
  np.testing.assert_allclose(bare, expected - sincos_position_embedding(grid, 16), rtol=1e-4,
                             atol=1e-4)


def test_outputs_block_outputs_and_class_token():
  model = _tiny((1, 4, 4), cls=True, depth=2)
  x = jax.random.normal(jax.random.key(1), (2, 2, 8, 8, 1))
  variables = _numpy_variables(model, x)
  out, blocks = jax.jit(lambda v: model.apply(v, x, return_block_outputs=True))(variables)
  assert out.shape == (2, 1 + 8, 16) and len(blocks) == 2
  assert all(b.shape == (2, 9, 16) for b in blocks)
  assert set(variables["params"]) == {"patch_embed", "blocks_0", "blocks_1", "norm", "cls_token"}
  # The output is the final LayerNorm of the last block output.
  last = np.asarray(blocks[-1])
  norm = variables["params"]["norm"]
  mean, var = last.mean(-1, keepdims=True), last.var(-1, keepdims=True)
  expected = ((last - mean) / np.sqrt(var + 1e-6) * np.asarray(norm["scale"])
              + np.asarray(norm["bias"]))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # The class token enters first, before the patch tokens.
  assert np.abs(blocks[0][:, 0] - blocks[0][:, 1]).max() > 1e-3


def test_keep_indices_select_tokens_before_the_blocks():
  # Without a class token the blocks are permutation-equivariant, so encoding a
  # permutation of all tokens permutes the full output; a subset gives different values.
  model = _tiny((1, 4, 4))
  x = jax.random.normal(jax.random.key(2), (2, 2, 8, 8, 1))
  variables = _numpy_variables(model, x)
  apply = jax.jit(lambda keep: model.apply(variables, x, keep_indices=keep))
  perm = np.stack([np.random.default_rng(s).permutation(8) for s in range(2)])
  full = np.asarray(apply(np.tile(np.arange(8), (2, 1))))
  np.testing.assert_allclose(apply(perm), np.take_along_axis(full, perm[..., None], 1), atol=1e-5)
  subset = np.asarray(apply(perm[:, :3]))
  assert subset.shape == (2, 3, 16)
  assert np.abs(subset - np.take_along_axis(full, perm[:, :3, None], 1)).max() > 1e-3


def test_grid_shape_and_bad_inputs():
  model = _tiny((4, 16, 16))
  assert model.grid_shape((8, 96, 64)) == (2, 6, 4)
  with pytest.raises(DataError, match="not tileable"):
    model.grid_shape((6, 96, 96))
  with pytest.raises(DataError, match="not tileable"):
    jax.eval_shape(_tiny((16, 16)).init, jax.random.key(0), jnp.zeros((1, 4, 32, 32, 1)))


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_named_sizes_and_base_parameter_count():
  assert VIT_SIZES.get("base") == {"width": 768, "depth": 12, "num_heads": 12}
  assert VIT_SIZES.get("tiny") == {"width": 192, "depth": 12, "num_heads": 3}
  assert VIT_SIZES.get("small") == {"width": 384, "depth": 12, "num_heads": 6}
  assert VIT_SIZES.get("large") == {"width": 1024, "depth": 24, "num_heads": 16}
  model = ViTEncoder(**VIT_SIZES.get("base"), patch_size=(1, 16, 16), use_class_token=True)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6, 96, 96, 1)))["params"]
  w = 768
  block = 2 * 2 * w + 4 * (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
  assert _count(params) == (256 * w + w) + 12 * block + 2 * w + w  # embed, blocks, norm, cls


def test_jit_forward_backward_3d():
  # The 2-D encoder runs forward and backward inside the 2-D MAE (tests/test_mae.py).
  model = _tiny((2, 4, 4), cls=True)
  x = jax.random.normal(jax.random.key(3), (2, 4, 8, 8, 1))
  params = _numpy_variables(model, x)["params"]
  loss_fn = lambda p: jnp.mean(model.apply({"params": p}, x, train=True) ** 3)
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def test_dropout_only_in_training():
  model = _tiny((1, 4, 4), dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(3), (1, 2, 8, 8, 1))
  variables = _numpy_variables(model, x)
  apply = jax.jit(lambda rng, train: model.apply(variables, x, train=train, rngs={"dropout": rng}),
                  static_argnums=1)
  train1, train2 = apply(jax.random.key(1), True), apply(jax.random.key(2), True)
  eval1, eval2 = apply(jax.random.key(1), False), apply(jax.random.key(2), False)
  np.testing.assert_array_equal(eval1, eval2)
  assert np.abs(train1 - train2).max() > 1e-3 and np.abs(train1 - eval1).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params():
  model = _tiny((1, 4, 4), cls=True, dtype=jnp.bfloat16)
  x = jnp.ones((1, 2, 8, 8, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.bfloat16
