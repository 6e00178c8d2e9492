"""YOLOSeg against the reference PyTorch NeuroSeg-III / YOLOv8s-seg (counts, converted weights).

Fixtures: ../shared/reference/neuroseg3 (README.md there says how they were made).
Activations there are NCHW; ours NHWC. Agreement criterion ("1e-4 relative"):
|ours - reference| <= 1e-4 * max|reference| + 1e-4 * |reference| elementwise.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from neuroseg_jax.errors import DataError
from neuroseg_jax.models import box_geometry
from neuroseg_jax.models import yolo_decode
from neuroseg_jax.models.ema_attention import EMA
from neuroseg_jax.models.necks import Fusion
from neuroseg_jax.models.segment_head import Proto
from neuroseg_jax.models.yolo_blocks import SPPF, Bottleneck, C2f
from neuroseg_jax.models.yolo_seg import PRESETS, YOLOSeg, build_yolo_seg
from neuroseg_jax.reference.profiling import count_params
from neuroseg_jax.reference.torch_convert import (convert_state_dict,
                                                  load_reference_variables, load_state_dict,
                                                  torch_layer_table)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "neuroseg3"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "neuroseg3_state.npz").exists(),
    reason=f"reference fixtures not found at {REFERENCE} (../shared is absent)")

# README.md table of the reference: (block, neck) -> (params, params without the frozen DFL weight).
REFERENCE_COUNTS = {
    ("c2f_faster_ema", "bifpn"): (6_452_943, 6_452_927),
    ("c2f", "pan"): (11_790_483, 11_790_467),
    ("c2f_faster", "bifpn"): (6_435_807, 6_435_791),
    ("c2f", "bifpn"): (7_880_607, 7_880_591),
    ("c2f_faster_ema", "pan"): (10_362_819, 10_362_803),
}
DFL_WEIGHTS = 16


def nhwc(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (0, 2, 3, 1))


def assert_matches(actual, expected_nchw_or_flat: np.ndarray, nchw: bool = True):
  expected = nhwc(expected_nchw_or_flat) if nchw else expected_nchw_or_flat
  actual = np.asarray(actual)
  assert actual.shape == expected.shape
  scale = np.abs(expected).max()
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def variable_shapes(model: YOLOSeg):
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize("block,neck", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_reference(block, neck):
  shapes = variable_shapes(YOLOSeg(scale="s", block=block, neck=neck, num_classes=1))
  count = count_params(shapes["params"])
  params_all, params_without_dfl = REFERENCE_COUNTS[(block, neck)]
  assert count == params_without_dfl  # our DFL is a constant, not a parameter
  assert count + DFL_WEIGHTS == params_all


def test_presets_build_the_reference_configurations():
  neuroseg3 = build_yolo_seg({"preset": "neuroseg3"})
  assert (neuroseg3.scale, neuroseg3.block, neuroseg3.neck, neuroseg3.num_classes) == (
      "s", "c2f_faster_ema", "bifpn", 1)
  plain = build_yolo_seg({"preset": "yolov8s_seg", "num_classes": 3, "dtype": "bfloat16"})
  assert (plain.block, plain.neck, plain.num_classes, plain.dtype) == (
      "c2f", "pan", 3, jnp.bfloat16)
  assert PRESETS.names() == ["neuroseg3", "yolov8s_seg"]
  with pytest.raises(KeyError, match="valid choices: bifpn, pan"):
    build_yolo_seg({"neck": "fpn"})


@functools.lru_cache(maxsize=None)
def reference_run(tag: str):
  """(variables, io fixture, outputs, intermediates) of NeuroSeg-III for state `neuroseg3{tag}`."""
  model = YOLOSeg(**PRESETS.get("neuroseg3"))
  variables = load_reference_variables(REFERENCE / f"neuroseg3{tag}_state.npz", model)
  io = dict(np.load(REFERENCE / f"neuroseg3{tag}_io.npz"))
  with jax.default_matmul_precision("highest"):
    outputs, state = _forward(model, variables, nhwc(io["x"]))
  return model, variables, io, outputs, state["intermediates"]


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, x):
  return model.apply(variables, x, train=False, capture_intermediates=True)


def captured(intermediates, path):
  node = intermediates
  for name in path:
    node = node[name]
  return node["__call__"][0]


def sub_variables(variables, path):
  """The {"params": ..., "batch_stats": ...} subtree of a submodule path."""
  out = {}
  for collection, tree in variables.items():
    for name in path:
      tree = tree.get(name) if isinstance(tree, dict) else None
    if tree is not None:
      out[collection] = tree
  return out


@needs_reference
@pytest.mark.parametrize("tag", ["", "_affine"])
def test_backbone_stages_match(tag):
  _, _, io, _, intermediates = reference_run(tag)
  for layer, name in ((2, "stage_p2"), (4, "stage_p3"), (6, "stage_p4"), (8, "stage_p5"),
                      (9, "sppf")):
    assert_matches(captured(intermediates, ("backbone", name)), io[f"backbone_layer{layer:02d}"])


@needs_reference
def test_every_layer_matches():
  model, _, _, _, intermediates = reference_run("")
  layers = np.load(REFERENCE / "neuroseg3_layers.npz")
  table = torch_layer_table(model)
  checked = [i for i in sorted(table) if f"layer{i:02d}" in layers.files]
  assert len(checked) == 26  # every layer but the two Upsamples (13, 16) and the head
  for index in checked:
    assert_matches(captured(intermediates, table[index]), layers[f"layer{index:02d}"])


@needs_reference
@pytest.mark.parametrize("tag", ["", "_affine"])
def test_head_outputs_match(tag):
  _, _, io, outputs, _ = reference_run(tag)
  raw = np.concatenate([io[f"raw_p{level}"].reshape(1, 65, -1) for level in (3, 4, 5)], axis=-1)
  raw = raw.transpose(0, 2, 1)  # [1, A, 65]
  assert_matches(outputs["box_logits"], raw[..., :64], nchw=False)
  assert_matches(outputs["cls_logits"], raw[..., 64:], nchw=False)
  assert_matches(outputs["mask_coef"], io["mask_coef"].transpose(0, 2, 1), nchw=False)
  assert_matches(outputs["protos"], io["protos"])


@needs_reference
@pytest.mark.parametrize("tag", ["", "_affine"])
def test_decoded_predictions_match(tag):
  _, _, io, outputs, _ = reference_run(tag)
  decoded = yolo_decode.decode_predictions(outputs, (256, 256))
  pred = io["pred"].transpose(0, 2, 1)  # [1, A, 37]
  assert_matches(decoded["boxes_xywh"], pred[..., :4], nchw=False)
  assert_matches(decoded["scores"], pred[..., 4:5], nchw=False)
  assert_matches(decoded["mask_coef"], pred[..., 5:], nchw=False)


@needs_reference
def test_decoding_intermediates_match():
  _, _, io, outputs, _ = reference_run("")
  points, strides = box_geometry.make_anchors((256, 256))
  np.testing.assert_array_equal(points, io["anchor_points"])
  np.testing.assert_array_equal(strides, io["anchor_strides"])
  ltrb = box_geometry.dfl_expectation(outputs["box_logits"])
  assert_matches(ltrb, io["dfl_ltrb"].transpose(0, 2, 1), nchw=False)


@needs_reference
def test_units_match_intermediates():
  _, _, _, _, intermediates = reference_run("")
  units = np.load(REFERENCE / "neuroseg3_units.npz")
  block = ("backbone", "stage_p2", "m_0")
  for unit, path in (("l8_m0_EMA", ("backbone", "stage_p5", "m_0", "attention")),
                     ("l9_SPPF", ("backbone", "sppf")),
                     ("l14_Fusion2", ("pyramid", "fuse_td_p4")),
                     ("l15_C2f", ("pyramid", "node_td_p4")),
                     ("l2_cv1", ("backbone", "stage_p2", "cv1")),
                     ("l2_cv2", ("backbone", "stage_p2", "cv2")),
                     ("l2_m0_FasterBlockEMA", block),
                     ("l2_m0_PartialConv", block + ("spatial_mixing",)),
                     ("l2_m0_mlp", block + ("drop_path",)),  # identity in eval: the mlp output
                     ("l2_m0_EMA", block + ("attention",))):
    assert_matches(captured(intermediates, path), units[f"{unit}__out"])


def apply_unit(module, variables, path, *inputs, **kwargs):
  apply = jax.jit(functools.partial(module.apply, **kwargs))
  with jax.default_matmul_precision("highest"):
    return apply(sub_variables(variables, path), *inputs)


@needs_reference
def test_standalone_modules_match_units():
  """Modules run alone on captured reference inputs, with their converted weights.

  (Every unit also sits inside the full model, compared above through its
  intermediates; these check the modules' standalone use on sub-variables.)
  """
  _, variables, _, _, _ = reference_run("")
  units = dict(np.load(REFERENCE / "neuroseg3_units.npz"))
  unit_in = lambda name, suffix="__in": nhwc(units[name + suffix])
  assert_matches(apply_unit(EMA(), variables, ("backbone", "stage_p5", "m_0", "attention"),
                            unit_in("l8_m0_EMA")), units["l8_m0_EMA__out"])
  assert_matches(apply_unit(Proto(128, 32), variables, ("head", "proto"), unit_in("seg_proto"),
                            train=False), units["seg_proto__out"])
  fusion_inputs = [unit_in("l20_Fusion3", f"__in{i}") for i in range(3)]
  assert_matches(apply_unit(Fusion(), variables, ("pyramid", "fuse_bu_p3"), fusion_inputs),
                 units["l20_Fusion3__out"])


@needs_reference
def test_ema_with_random_affine_group_norm_matches():
  _, variables, io, _, intermediates = reference_run("_affine")
  gn_scale = variables["params"]["backbone"]["stage_p2"]["m_0"]["attention"]["gn"]["scale"]
  assert not np.allclose(gn_scale, 1.0)  # the affine fixture really exercises gn's affine part
  for unit, stage in (("unit_l2_m0_EMA", "stage_p2"), ("unit_l8_m0_EMA", "stage_p5")):
    attention = ("backbone", stage, "m_0", "attention")
    assert_matches(captured(intermediates, attention[:-1] + ("drop_path",)), io[unit + "__in"])
    assert_matches(captured(intermediates, attention), io[unit + "__out"])


@needs_reference
def test_yolov8s_seg_units():
  state_path = REFERENCE / "yolov8s_seg_state.npz"
  if not state_path.exists():
    pytest.skip("yolov8s_seg_state.npz is not shipped: the l2_C2f / l2_m0_Bottleneck / l9_SPPF / "
                "seg_proto units of plain YOLOv8s-seg need its weights (its parameter counts "
                "are tested above)")
  variables = load_reference_variables(state_path, YOLOSeg(**PRESETS.get("yolov8s_seg")))
  units = dict(np.load(REFERENCE / "yolov8s_seg_units.npz"))
  for unit, module, path in (
      ("l2_C2f", C2f(64, 1, shortcut=True), ("backbone", "stage_p2")),
      ("l2_m0_Bottleneck", Bottleneck(32), ("backbone", "stage_p2", "m_0")),
      ("l9_SPPF", SPPF(512), ("backbone", "sppf")),
      ("seg_proto", Proto(128, 32), ("head", "proto"))):
    out = apply_unit(module, variables, path, nhwc(units[unit + "__in"]), train=False)
    assert_matches(out, units[unit + "__out"])


@pytest.fixture(scope="module")
def reference_state():
  if not (REFERENCE / "neuroseg3_state.npz").exists():
    pytest.skip(f"reference fixtures not found at {REFERENCE} (../shared is absent)")
  return load_state_dict(REFERENCE / "neuroseg3_state.npz")


def test_converter_fills_every_leaf_from_every_key(reference_state):
  model = YOLOSeg(**PRESETS.get("neuroseg3"))
  variables = convert_state_dict(reference_state, model)
  shapes = variable_shapes(model)
  for collection in ("params", "batch_stats"):
    ours = traverse_util.flatten_dict(variables[collection])
    want = traverse_util.flatten_dict(shapes[collection])
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in want.items()}
  used = [k for k in reference_state
          if not k.endswith("num_batches_tracked") and k != "model.28.dfl.conv.weight"]
  leaves = sum(len(traverse_util.flatten_dict(v)) for v in variables.values())
  assert leaves == len(used)
  # Layouts: OIHW -> HWIO for convs, [in, out, kh, kw] -> [kh, kw, in, out] for the upsample.
  np.testing.assert_array_equal(variables["params"]["backbone"]["stem"]["conv"]["kernel"],
                                reference_state["model.0.conv.weight"].transpose(2, 3, 1, 0))
  upsample = reference_state["model.28.proto.upsample.weight"]
  np.testing.assert_array_equal(variables["params"]["head"]["proto"]["upsample"]["kernel"],
                                upsample.transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(variables["params"]["pyramid"]["fuse_bu_p3"]["fusion_weight"],
                                reference_state["model.20.fusion_weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["head"]["cv3_2_1"]["bn"]["mean"],
                                reference_state["model.28.cv3.2.1.bn.running_mean"])


def test_converter_reports_missing_and_unexpected_keys(reference_state):
  model = YOLOSeg(**PRESETS.get("neuroseg3"))
  broken = dict(reference_state)
  del broken["model.15.m.0.cv1.bn.running_var"]
  broken["model.15.m.1.cv1.conv.weight"] = np.zeros((64, 64, 3, 3), np.float32)
  with pytest.raises(DataError) as err:
    convert_state_dict(broken, model, source="broken.npz")
  message = str(err.value)
  assert message.startswith("broken.npz: ")
  assert "batch_stats/pyramid/node_td_p4/m_0/cv1/bn/var" in message
  assert "model.15.m.1.cv1.conv.weight" in message


def test_converter_checks_the_frozen_dfl_weight(reference_state):
  broken = dict(reference_state)
  broken["model.28.dfl.conv.weight"] = np.ones((1, 16, 1, 1), np.float32)
  with pytest.raises(DataError, match="frozen DFL weight should be 0..15"):
    convert_state_dict(broken, YOLOSeg(**PRESETS.get("neuroseg3")))


def test_converter_rejects_another_architecture(reference_state):
  with pytest.raises(DataError, match="shape mismatches|missing Flax leaves"):
    convert_state_dict(reference_state, YOLOSeg(**PRESETS.get("yolov8s_seg")))


def test_pt_files_need_torch_or_load(tmp_path, reference_state):
  path = tmp_path / "state.pt"
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    path.write_bytes(b"not read")
    with pytest.raises(DataError, match="needs PyTorch"):
      load_state_dict(path)
    return
  torch.save({k: torch.from_numpy(v) for k, v in reference_state.items()}, path)
  loaded = load_state_dict(path)
  assert loaded.keys() == reference_state.keys()
  np.testing.assert_array_equal(loaded["model.0.conv.weight"],
                                reference_state["model.0.conv.weight"])
