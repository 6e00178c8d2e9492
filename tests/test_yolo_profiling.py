"""Parameter and FLOP counting (neuroseg_jax.reference.profiling)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from neuroseg_jax.models.yolo_seg import YOLOSeg
from neuroseg_jax.reference import profiling

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "neuroseg3"
# The count is the same code for every configuration (parameter counts of all five:
# test_yolo_seg_reference.py).
STATS_NAMES = {("c2f_faster_ema", "bifpn"): "a_neuroseg3"}


def conv3x3_same(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_count_params():
  tree = {"a": jnp.zeros((3, 3, 4, 8)), "b": {"c": jnp.zeros(8), "d": jnp.zeros((2, 5))}}
  assert profiling.count_params(tree) == 288 + 8 + 10


def test_matmul_flops_counts_every_kernel_tap_and_dot():
  x, kernel = jnp.ones((2, 10, 12, 4)), jnp.ones((3, 3, 4, 8))
  assert profiling.matmul_flops(conv3x3_same, x, kernel) == 2 * (2 * 10 * 12 * 8) * (3 * 3 * 4)
  a, b = jax.ShapeDtypeStruct((5, 6, 7), jnp.float32), jax.ShapeDtypeStruct((5, 7, 3), jnp.float32)
  both = lambda a, b, x, k: (jnp.einsum("bij,bjk->bik", a, b), jax.jit(conv3x3_same)(x, k))
  assert profiling.matmul_flops(both, a, b, x, kernel) == 2 * 5 * 6 * 3 * 7 + 2 * 1920 * 36


def test_xla_flops_skip_padding_taps_and_count_elementwise_ops():
  x, kernel = jnp.ones((1, 10, 12, 4)), jnp.ones((3, 3, 4, 8))
  # Taps inside the image per output row / column: 3 in the interior, 2 at each border.
  taps = (3 * 8 + 2 * 2) * (3 * 10 + 2 * 2)
  assert profiling.xla_flops(conv3x3_same, x, kernel) == 2 * 8 * 4 * taps
  assert profiling.xla_flops(lambda x: x * 2.0 + 1.0, x) == 2 * x.size


@pytest.mark.parametrize("block,neck", sorted(STATS_NAMES))
def test_matmul_flops_equal_reference_flop_counter(block, neck):
  """Exact equality with torch.utils.flop_counter on the reference (conv + bmm, 640 x 640)."""
  paths = [REFERENCE / "model_stats_a.json", REFERENCE / "model_stats_b_c.json"]
  if not all(p.exists() for p in paths):
    pytest.skip(f"reference model statistics not found in {REFERENCE} (../shared is absent)")
  stats = {entry["name"]: entry for p in paths for entry in json.loads(p.read_text())}
  reference = stats[STATS_NAMES[(block, neck)]]
  forward, variables, images = profiling.inference_fn(YOLOSeg(block=block, neck=neck), (640, 640))
  flops = profiling.matmul_flops(forward, variables, images)
  assert flops == round(reference["gflops_flopcounter_eval_640"] * 1e9)
  assert profiling.count_params(variables["params"]) == reference["params_excl_dfl"]
  assert profiling.count_params(variables["batch_stats"]) == reference["bn_running_elems"]
  # Ultralytics' thop-based GFLOPs count more (ConvTranspose by output size, BatchNorm, ...).
  assert 2.7 < reference["gflops_ultra_eval_640"] - flops / 1e9 < 2.9
