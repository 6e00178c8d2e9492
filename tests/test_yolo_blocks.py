"""YOLO / FasterNet / EMA / BiFPN building blocks at tiny widths (NHWC), jit-compiled."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.ema_attention import EMA
from neuroseg_jax.models.fasternet import C2F_BLOCKS, DropPath, FasterBlock, PartialConv
from neuroseg_jax.models.necks import NECKS, Fusion
from neuroseg_jax.models.segment_head import Proto, SegmentHead, TransposedConv2x2
from neuroseg_jax.models.yolo_blocks import (SCALES, SPPF, Bottleneck, C2f, ConvBNAct,
                                             max_pool_same, upsample_nearest2x)
from neuroseg_jax.models.yolo_seg import YOLOBackbone, YOLOSeg

RNG = np.random.default_rng(0)


def normal(*shape):
  return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def key(seed):
  # "rbg" keys: XLA:CPU compiles threefry slowly (about a second per random shape).
  return jax.random.key(seed, impl="rbg")


def random_variables(module, *inputs, **kwargs):
  """Variables of `module` filled from NumPy without compiling an init.

  Kernels ~ N(0, 1 / fan_in); 1-D parameters (norm scales and biases, biases,
  fusion weights) ~ U(0.5, 1.5); running means ~ N(0, 0.1), variances ~ U(0.5, 1.5).
  """
  shapes = jax.eval_shape(
      lambda *xs: module.init({"params": key(0), "drop_path": key(1)}, *xs, **kwargs), *inputs)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if len(leaf.shape) > 1:
      return RNG.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    if "mean" in name:
      return RNG.normal(size=leaf.shape) * 0.1
    return RNG.uniform(0.5, 1.5, size=leaf.shape)

  return jax.tree_util.tree_map_with_path(lambda p, l: jnp.asarray(fill(p, l), jnp.float32), shapes)


def check_forward_backward(module, inputs, expected_shape, has_train=True):
  """Jit train-mode forward (shape, finite) and a gradient reaching every parameter."""
  train_kw = {"train": True} if has_train else {}
  variables = random_variables(module, *inputs, **({"train": False} if has_train else {}))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  def run(params, inputs):
    def loss(params):
      y, _ = module.apply({"params": params, **state}, *inputs, **train_kw, mutable=list(state),
                          rngs={"drop_path": key(2)})
      return jnp.mean(y ** 2), y

    return jax.grad(loss, has_aux=True)(params)

  grads, out = run(params, inputs)
  assert out.shape == expected_shape
  assert np.isfinite(np.asarray(out)).all()
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(grad)).all(), path
    assert np.abs(np.asarray(grad)).max() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


# C2f with each inner block covers ConvBNAct, Bottleneck (+EMA), FasterBlock, FasterEMABlock,
# PartialConv, EMA and DropPath (chaining several blocks: the reference test, layers 4 and 6);
# Proto covers TransposedConv2x2.
BLOCK_CASES = {
    f"c2f[{name}]": (C2f(32, 1, shortcut=True, block_fn=C2F_BLOCKS.get(name)(0.1)),
                     (2, 8, 8, 16), (2, 8, 8, 32)) for name in C2F_BLOCKS}
BLOCK_CASES.update({
    "sppf": (SPPF(12), (2, 8, 8, 8), (2, 8, 8, 12)),
    "proto": (Proto(8, 4), (2, 4, 4, 16), (2, 8, 8, 4)),
})


@pytest.mark.parametrize("name", sorted(BLOCK_CASES))
def test_block_forward_backward(name):
  module, in_shape, out_shape = BLOCK_CASES[name]
  check_forward_backward(module, (normal(*in_shape),), out_shape)


def test_fusion_forward_backward():
  check_forward_backward(Fusion(), ([normal(2, 4, 4, 8) for _ in range(3)],), (2, 4, 4, 8),
                         has_train=False)


def test_bottleneck_residual_only_with_shortcut():
  x = normal(2, 4, 4, 8)
  variables = random_variables(Bottleneck(8), x, train=False)
  both = jax.jit(lambda v, x: [Bottleneck(8, shortcut=s).apply(v, x, train=False)
                               for s in (True, False)])
  with_shortcut, without = both(variables, x)
  np.testing.assert_allclose(with_shortcut - without, x, rtol=1e-6, atol=1e-6)
  widening = random_variables(Bottleneck(16), x, train=False)
  # 8 -> 16 channels: no residual possible.
  assert Bottleneck(16).apply(widening, x, train=False).shape == (2, 4, 4, 16)


def test_conv_bn_act_matches_numpy():
  x = normal(2, 5, 5, 3)
  module = ConvBNAct(4, 3, 2)
  kernel = normal(3, 3, 3, 4)
  mean, var = normal(4), jnp.abs(normal(4)) + 0.5
  scale, bias = normal(4), normal(4)
  variables = {"params": {"conv": {"kernel": kernel}, "bn": {"scale": scale, "bias": bias}},
               "batch_stats": {"bn": {"mean": mean, "var": var}}}
  with jax.default_matmul_precision("highest"):
    out = np.asarray(jax.jit(functools.partial(module.apply, train=False))(variables, x))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero padding k // 2
  conv = np.zeros((2, 3, 3, 4))
  for i in range(3):
    for j in range(3):
      patch = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
      conv[:, i, j] = np.einsum("bhwc,hwco->bo", patch, np.asarray(kernel))
  normed = (conv - mean) / np.sqrt(var + 1e-3) * scale + bias
  np.testing.assert_allclose(out, normed / (1 + np.exp(-normed)), rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_update_only_in_training():
  x = normal(4, 3, 3, 2) * 3 + 1
  module = ConvBNAct(2)
  variables = random_variables(module, x, train=False)
  old = jax.tree.map(np.asarray, variables["batch_stats"]["bn"])
  apply = jax.jit(functools.partial(module.apply, mutable=["batch_stats"]), static_argnames="train")
  with jax.default_matmul_precision("highest"):
    _, updated = apply(variables, x, train=True)
    _, unchanged = apply(variables, x, train=False)
  kernel = np.asarray(variables["params"]["conv"]["kernel"][0, 0])
  pre_bn = np.einsum("bhwc,co->bhwo", np.asarray(x), kernel).reshape(-1, 2)
  # running = 0.97 running + 0.03 batch statistic (Flax: biased batch variance).
  np.testing.assert_allclose(updated["batch_stats"]["bn"]["mean"],
                             0.97 * old["mean"] + 0.03 * pre_bn.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["bn"]["var"],
                             0.97 * old["var"] + 0.03 * pre_bn.var(0), rtol=1e-5)
  for name in ("mean", "var"):
    np.testing.assert_array_equal(unchanged["batch_stats"]["bn"][name], old[name])


def test_drop_path_only_in_training():
  x = jnp.ones((64, 2, 2, 3))
  drop = DropPath(0.25)
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
  out = np.asarray(drop.apply({}, x, deterministic=False, rngs={"drop_path": key(0)}))
  per_sample = out.reshape(64, -1)
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  assert (per_sample.min(1) == per_sample.max(1)).all()  # whole samples are dropped
  assert 0 < (per_sample[:, 0] == 0).sum() < 40


def test_faster_block_training_is_stochastic_and_eval_deterministic():
  x = normal(8, 4, 4, 8)
  block = FasterBlock(8, drop_path_rate=0.5)
  variables = random_variables(block, x, train=False)
  apply_eval = jax.jit(functools.partial(block.apply, train=False))
  np.testing.assert_array_equal(apply_eval(variables, x), apply_eval(variables, x))
  apply_train = jax.jit(lambda v, x, rng: block.apply(v, x, train=True, mutable=["batch_stats"],
                                                      rngs={"drop_path": rng})[0])
  train = lambda seed: apply_train(variables, x, key(seed))
  # A dropped sample's residual branch is zero, so the block returns that sample unchanged.
  dropped = np.abs(np.asarray(train(0)) - np.asarray(x)).reshape(8, -1).max(1) == 0
  assert dropped.any() and not dropped.all()
  assert not np.allclose(train(0), train(1))
  with pytest.raises(Exception, match="drop_path"):
    block.apply(variables, x, train=True, mutable=["batch_stats"])


def test_partial_conv_mixes_only_the_first_quarter():
  x = normal(2, 5, 5, 16)
  module = PartialConv()
  variables = random_variables(module, x)
  out = np.asarray(module.apply(variables, x))
  np.testing.assert_array_equal(out[..., 4:], np.asarray(x)[..., 4:])
  assert variables["params"]["partial_conv3"]["kernel"].shape == (3, 3, 4, 4)
  assert not np.allclose(out[..., :4], np.asarray(x)[..., :4])


def test_ema_gates_each_group_with_one_spatial_map():
  x = jnp.abs(normal(2, 5, 7, 32)) + 0.1
  module = EMA()
  variables = random_variables(module, x)
  gate = np.asarray(jax.jit(module.apply)(variables, x) / x).reshape(2, 5, 7, 8, 4)
  np.testing.assert_allclose(gate, np.broadcast_to(gate[..., :1], gate.shape), rtol=1e-5)
  assert (gate > 0).all() and (gate < 1).all()  # a sigmoid gate
  assert gate[..., 0].std() > 1e-4  # the map varies in space
  with pytest.raises(DataError, match="12 channels do not split into 8 groups"):
    jax.eval_shape(module.init, key(0), jnp.zeros((1, 4, 4, 12)))


def test_max_pool_pads_with_minus_infinity():
  x = -1.0 - jnp.abs(normal(1, 6, 6, 2))
  out = np.asarray(max_pool_same(x, 5))
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-np.inf)
  expected = np.stack([np.stack([padded[:, i:i + 5, j:j + 5].max((1, 2)) for j in range(6)], axis=1)
                       for i in range(6)], axis=1)
  np.testing.assert_array_equal(out, expected)


def test_fusion_weights_are_relu_then_normalised():
  a, b = normal(1, 2, 2, 3), normal(1, 2, 2, 3)
  fuse = lambda w: Fusion().apply({"params": {"fusion_weight": jnp.asarray(w)}}, [a, b])
  np.testing.assert_allclose(fuse([1.0, 3.0]), 0.25 * a + 0.75 * b, rtol=1e-6)
  np.testing.assert_allclose(fuse([-2.0, 0.5]), b, rtol=1e-6)  # negative weight clipped to 0
  assert Fusion().init(key(0), [a, b])["params"]["fusion_weight"].tolist() == [1.0, 1.0]


def test_transposed_conv_matches_pytorch_formula():
  x, kernel, bias = normal(1, 2, 3, 4), normal(2, 2, 4, 5), normal(5)
  out = np.asarray(TransposedConv2x2(5).apply({"params": {"kernel": kernel, "bias": bias}}, x))
  for i in range(2):
    for j in range(3):
      for di in range(2):
        for dj in range(2):
          want = np.asarray(bias) + np.asarray(x)[0, i, j] @ np.asarray(kernel)[di, dj]
          np.testing.assert_allclose(out[0, 2 * i + di, 2 * j + dj], want, rtol=1e-5, atol=1e-6)


def test_upsample_nearest():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(upsample_nearest2x(x)[0, :, :, 0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_compound_scaling_follows_ultralytics():
  # channels = ceil(min(c, max_channels) * width / 8) * 8; repeats = max(round(n * depth), 1).
  assert [SCALES.get(s).channels(1024) for s in "nsmlx"] == [256, 512, 576, 512, 640]
  assert [SCALES.get(s).channels(64) for s in "nsmlx"] == [16, 32, 48, 64, 80]
  assert [SCALES.get(s).repeats(6) for s in "nsmlx"] == [2, 2, 4, 6, 6]
  assert [SCALES.get(s).repeats(3) for s in "nsmlx"] == [1, 1, 2, 3, 3]
  assert SCALES.get("s").repeats(1) == 1


@pytest.mark.parametrize("neck", ["bifpn", "pan"])
def test_neck_shapes(neck):
  features = {"p2": normal(1, 16, 16, 16), "p3": normal(1, 8, 8, 32), "p4": normal(1, 4, 4, 64),
              "p5": normal(1, 2, 2, 128)}
  module = NECKS.get(neck)("n")
  variables = jax.eval_shape(functools.partial(module.init, train=False), key(0), features)
  outputs = jax.eval_shape(functools.partial(module.apply, train=False), variables, features)
  widths = (64, 64, 64) if neck == "bifpn" else (64, 128, 256)  # scale n of 256 / 256, 512, 1024
  assert [p.shape for p in outputs] == [(1, 8, 8, widths[0]), (1, 4, 4, widths[1]),
                                        (1, 2, 2, widths[2])]


def test_segment_head_outputs_and_bias_init():
  levels = (normal(1, 4, 4, 8), normal(1, 2, 2, 16), normal(1, 1, 1, 32))
  head = SegmentHead(num_classes=2, proto_channels=8)
  variables = jax.eval_shape(functools.partial(head.init, train=False), key(0), levels)
  out = jax.eval_shape(functools.partial(head.apply, train=False), variables, levels)
  assert {k: v.shape for k, v in out.items()} == {
      "box_logits": (1, 21, 64), "cls_logits": (1, 21, 2), "mask_coef": (1, 21, 32),
      "protos": (1, 8, 8, 32)}
  params = variables["params"]
  # Jit returning only the (constant) final biases: XLA drops the forward pass and random kernels.
  def final_biases(levels):
    params = head.init(key(0), levels, train=False)["params"]
    return {name: p["bias"] for name, p in params.items()
            if name.startswith(("cv2", "cv3")) and name.endswith("_2")}

  final_biases = jax.jit(final_biases)(levels)
  for level, stride in enumerate((8, 16, 32)):
    np.testing.assert_array_equal(final_biases[f"cv2_{level}_2"], np.ones(64))
    np.testing.assert_allclose(final_biases[f"cv3_{level}_2"],
                               np.full(2, np.log(5 / 2 / (640 / stride) ** 2)), rtol=1e-6)
  # Branch widths from the P3 channels (8): box max(16, 2, 64), class max(8, 2), mask max(2, 32).
  assert params["cv2_1_0"]["conv"]["kernel"].shape == (3, 3, 16, 64)
  assert params["cv3_2_1"]["conv"]["kernel"].shape == (3, 3, 8, 8)
  assert params["cv4_0_0"]["conv"]["kernel"].shape == (3, 3, 8, 32)


def abstract_variables(model, x):
  return jax.eval_shape(lambda x: model.init({"params": key(0)}, x, train=False), x)


def test_yolo_seg_output_contract():
  """Whole-model shapes by abstract evaluation (compiling the full model takes ~10 s on CPU).

  The reference test runs NeuroSeg-III (c2f_faster_ema + bifpn) for real; here the other
  block and neck, in bfloat16 compute.
  """
  block = "c2f_ema"
  model = YOLOSeg(scale="n", block=block, neck="pan", num_classes=3, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  variables = abstract_variables(model, x)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"backbone", "pyramid", "head"}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  anchors = 8 * 12 + 4 * 6 + 2 * 3
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      "box_logits": ((2, anchors, 64), jnp.bfloat16), "cls_logits": ((2, anchors, 3), jnp.bfloat16),
      "mask_coef": ((2, anchors, 32), jnp.bfloat16), "protos": ((2, 16, 24, 32), jnp.bfloat16)}
  backbone_only = {k: v["backbone"] for k, v in variables.items()}  # what TiCo transfers
  features = jax.eval_shape(functools.partial(YOLOBackbone("n", block).apply, train=False),
                            backbone_only, x)
  assert {k: v.shape for k, v in features.items()} == {
      "p2": (2, 16, 24, 32), "p3": (2, 8, 12, 64), "p4": (2, 4, 6, 128), "p5": (2, 2, 3, 256)}


def test_neuroseg3_train_step_gradients_trace():
  model = YOLOSeg(scale="n")
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = abstract_variables(model, x)

  def train_loss(params, batch_stats, x):
    out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                         mutable=["batch_stats"], rngs={"drop_path": key(0)})
    return sum(jnp.sum(v ** 2) for v in out.values())

  grads = jax.eval_shape(jax.grad(train_loss), variables["params"], variables["batch_stats"], x)
  shapes = lambda tree: jax.tree.map(lambda leaf: leaf.shape, tree)
  assert shapes(grads) == shapes(variables["params"])


def test_yolo_seg_rejects_bad_input_sizes():
  model = YOLOSeg(scale="n")
  with pytest.raises(DataError, match="multiples of 32, got 48x64"):
    jax.eval_shape(lambda: model.init(key(0), jnp.zeros((1, 48, 64, 3)), train=False))
  with pytest.raises(DataError, match=r"expected an image batch \[B, H, W, C\]"):
    jax.eval_shape(lambda: model.init(key(0), jnp.zeros((64, 64, 3)), train=False))

