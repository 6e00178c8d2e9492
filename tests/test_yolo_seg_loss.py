"""YOLOv8-seg loss: hand-computed terms, padding invariance, descent, dtype handling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from neuroseg_jax.errors import DataError
from neuroseg_jax.losses import yolo_seg_loss as seg_loss
from neuroseg_jax.models import box_geometry
from yolo_head_fixtures import dfl_logits_for

SIZE = 64
POINTS, STRIDES = box_geometry.make_anchors((SIZE, SIZE))
NUM_ANCHORS = len(POINTS)
GT_BOX = np.asarray([8.0, 24.0, 40.0, 40.0])  # 8 stride-8 anchor centres inside, all .5 cells away
CANDIDATES = [r * 8 + c for r in (3, 4) for c in (1, 2, 3, 4)]
softplus = lambda x: math.log1p(math.exp(x))


def make_batch(extra_padding: int = 3, seed: int = 0):
  """One true instance (GT_BOX) plus `extra_padding` garbage slots with valid=False."""
  rng = np.random.default_rng(seed)
  num = 1 + extra_padding
  boxes = np.zeros((1, num, 4), np.float32)
  boxes[0, 0] = GT_BOX
  boxes[0, 1:] = rng.uniform(0, 64, (extra_padding, 4))  # garbage behind valid=False
  masks = rng.integers(0, 2, (1, num, SIZE // 4, SIZE // 4)).astype(np.uint8)
  masks[0, 0] = 0
  masks[0, 0, 7:9, 3:8] = 1
  return {"image": np.zeros((1, SIZE, SIZE, 1), np.float32), "boxes": boxes,
          "classes": np.zeros((1, num), np.int32), "valid": np.arange(num)[None] == 0,
          "masks": masks}


def make_outputs(mask_logit: float = 0.0):
  """Candidates predict GT_BOX exactly (DFL mass split .5/.5) with logit 2, others -3.

  Protos: channel 0 = +mask_logit on the true mask, -mask_logit elsewhere inside the box
  and the *wrong* sign outside the box (which the crop must ignore).
  """
  box_logits = np.zeros((1, NUM_ANCHORS, 64), np.float32)
  cls_logits = np.full((1, NUM_ANCHORS, 1), -3.0, np.float32)
  coefs = np.zeros((1, NUM_ANCHORS, 32), np.float32)
  for a in CANDIDATES:
    point = POINTS[a] * 8
    ltrb = np.concatenate([point - GT_BOX[:2], GT_BOX[2:] - point]) / 8
    box_logits[0, a] = dfl_logits_for(ltrb)
    cls_logits[0, a] = 2.0
    coefs[0, a, 0] = 1.0
  truth = make_batch()["masks"][0, 0].astype(bool)
  inside = np.zeros((16, 16), bool)
  inside[6:10, 2:10] = True
  protos = np.zeros((1, 16, 16, 32), np.float32)
  protos[0, ..., 0] = np.where(truth == inside, 1.0, -1.0) * mask_logit
  return {"box_logits": box_logits, "cls_logits": cls_logits, "mask_coef": coefs, "protos": protos}


loss = jax.jit(seg_loss.yolo_seg_loss)
value_and_grad = jax.jit(jax.value_and_grad(lambda o, b: seg_loss.yolo_seg_loss(o, b)[0]))


def test_hand_computed_terms():
  total, metrics = loss(make_outputs(), make_batch())
  assert metrics["num_positives"] == 8
  np.testing.assert_allclose(metrics["box"], 0.0, atol=1e-4)  # predicted box == target
  # Every distance is k + 0.5 and the DFL mass is split .5/.5: cross-entropy = ln 2.
  np.testing.assert_allclose(metrics["dfl"], 1.5 * math.log(2), rtol=1e-5)
  # Soft targets are 1 for the 8 positives (equal metrics, CIoU 1), 0 elsewhere.
  cls = (8 * softplus(-2.0) + (NUM_ANCHORS - 8) * softplus(-3.0)) / 8
  np.testing.assert_allclose(metrics["cls"], 0.5 * cls, rtol=1e-5)
  # Mask logits 0: BCE = ln 2 on each of the 8x4 cells of the box, / box area 32.
  np.testing.assert_allclose(metrics["mask"], 7.5 * math.log(2), rtol=1e-5)
  np.testing.assert_allclose(total, sum(metrics[k] for k in ("box", "cls", "dfl", "mask")),
                             rtol=1e-6)


def test_mask_term_is_cropped_to_the_box():
  _, metrics = loss(make_outputs(mask_logit=4.0), make_batch())
  # Inside the box every cell is correct with margin 4; outside, all wrong but cropped.
  np.testing.assert_allclose(metrics["mask"], 7.5 * softplus(-4.0), rtol=1e-5)


def test_padding_instances_change_nothing():
  outputs = make_outputs(mask_logit=1.0)
  total, _ = loss(outputs, make_batch(extra_padding=3))
  unpadded_total, _ = loss(outputs, make_batch(extra_padding=0))
  np.testing.assert_allclose(total, unpadded_total, rtol=1e-6)
  # Different garbage behind valid=False: identical value and gradients, all finite.
  value, grads = value_and_grad(outputs, make_batch(seed=0))
  other_value, other_grads = value_and_grad(outputs, make_batch(seed=1))
  assert value == other_value
  for key in grads:
    assert np.isfinite(grads[key]).all()
    np.testing.assert_array_equal(other_grads[key], grads[key])


def test_normalization_is_over_the_whole_batch_without_batch_size_factor():
  single = make_batch()
  empty = jax.tree.map(np.copy, single)
  empty["valid"][:] = False
  batch = jax.tree.map(lambda a, b: np.concatenate([a, b]), single, empty)
  outputs = jax.tree.map(lambda a: np.concatenate([a, a]), make_outputs())
  _, one = loss(make_outputs(), single)
  _, two = loss(outputs, batch)
  # Image 2 has no positives: its anchors only add background BCE (logit 2 on the 8
  # would-be candidates, -3 elsewhere) to the class sum; the normalizer stays 8.
  background = 8 * softplus(2.0) + (NUM_ANCHORS - 8) * softplus(-3.0)
  np.testing.assert_allclose(two["cls"], one["cls"] + 0.5 * background / 8, rtol=1e-5)
  for key in ("box", "dfl", "mask"):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6)


def test_gradient_steps_on_the_outputs_reduce_the_loss_and_align_the_boxes():
  rng = np.random.default_rng(1)
  outputs = {k: rng.normal(0, 0.3, v.shape).astype(np.float32)
             for k, v in make_outputs().items()}
  batch = make_batch()

  def candidate_ciou(outs):
    ltrb = box_geometry.dfl_expectation(outs["box_logits"][0, CANDIDATES])
    boxes = box_geometry.distances_to_xyxy(ltrb, POINTS[CANDIDATES]) * 8
    return np.asarray(box_geometry.complete_iou(boxes, GT_BOX))

  losses, initial_ciou = [], candidate_ciou(outputs)
  for _ in range(30):
    value, grads = value_and_grad(outputs, batch)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    losses.append(float(value))
    outputs = {k: outputs[k] - 0.05 * np.sign(grads[k]) for k in outputs}  # sign-SGD
  assert losses[-1] < 0.5 * losses[0]
  assert np.all(candidate_ciou(outputs) > initial_ciou + 0.1)


def test_bfloat16_outputs_give_float32_loss():
  outputs = make_outputs(mask_logit=1.0)
  total, _ = loss(outputs, make_batch())
  total_bf16, _ = loss(jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), outputs), make_batch())
  assert total_bf16.dtype == jnp.float32
  np.testing.assert_allclose(total_bf16, total, rtol=2e-2)


def test_distribution_focal_loss_on_and_between_bins():
  logits = np.random.default_rng(2).normal(size=(64,)).astype(np.float32)
  log_p = special.log_softmax(logits.reshape(4, 16).astype(np.float64), axis=-1)
  dfl = jax.jit(seg_loss.distribution_focal_loss)
  on_bin = dfl(logits, jnp.asarray([3.0, 0.0, 7.0, 14.0]))
  np.testing.assert_allclose(on_bin, -(log_p[0, 3] + log_p[1, 0] + log_p[2, 7] + log_p[3, 14]) / 4,
                             rtol=1e-6)
  between = dfl(logits, jnp.asarray([2.25, 2.25, 2.25, 2.25]))
  expected = -np.mean(0.75 * log_p[:, 2] + 0.25 * log_p[:, 3])
  np.testing.assert_allclose(between, expected, rtol=1e-6)


def test_masks_at_the_wrong_resolution_raise_data_error():
  batch = make_batch()
  batch["masks"] = np.zeros((1, 1, 32, 32), np.uint8)
  with pytest.raises(DataError, match="prototype resolution"):
    seg_loss.yolo_seg_loss(make_outputs(), batch)


def _random_problem(box_sizes, size=128, seed=3):
  """Random head outputs for a size x size image and square boxes of `box_sizes` px."""
  rng = np.random.default_rng(seed)
  anchors, cells = len(box_geometry.make_anchors((size, size))[0]), size // 4
  outputs = {"box_logits": rng.normal(0, 1, (1, anchors, 64)),
             "cls_logits": rng.normal(0, 1, (1, anchors, 1)),
             "mask_coef": rng.normal(0, 1, (1, anchors, 8)),
             "protos": rng.normal(0, 1, (1, cells, cells, 8))}
  corners = rng.uniform(0, size - max(box_sizes), (len(box_sizes), 2))
  boxes = np.concatenate([corners, corners + np.asarray(box_sizes)[:, None]], axis=1)
  boxes = np.concatenate([boxes, rng.uniform(-50, 500, (2, 4))])  # 2 padding slots, garbage
  valid = np.arange(len(boxes)) < len(box_sizes)
  batch = {"image": np.zeros((1, size, size, 1)), "boxes": boxes[None],
           "classes": np.zeros((1, len(boxes)), np.int32), "valid": valid[None],
           "masks": rng.integers(0, 2, (1, len(boxes), cells, cells)).astype(np.uint8)}
  to_f32 = lambda tree: jax.tree.map(  # noqa: E731
      lambda a: a.astype(np.float32) if a.dtype == np.float64 else a, tree)
  return to_f32(outputs), to_f32(batch)


@pytest.mark.parametrize("box_sizes, windowed", [((12, 20, 27, 16), True), ((12, 80), False)])
def test_mask_term_on_crops_equals_the_full_map(box_sizes, windowed):
  outputs, batch = _random_problem(box_sizes)
  # 7 cells at most (27 px / stride 4) fit an 8-cell crop; an 80 px box does not, and
  # the whole batch then takes the full-map path.
  real_boxes = batch["boxes"][batch["valid"]]
  assert bool(seg_loss.boxes_fit_windows(real_boxes / 4, 8, 32, 32).all()) == windowed

  def value_and_grads(window):
    hyper = seg_loss.SegLossHyper(mask_window=window)
    fn = jax.jit(jax.value_and_grad(lambda o: seg_loss.yolo_seg_loss(o, batch, hyper)[1]["mask"]))
    return fn(outputs)

  (full, full_grads), (cropped, cropped_grads) = value_and_grads(0), value_and_grads(8)
  assert float(full) > 0
  np.testing.assert_allclose(cropped, full, rtol=1e-5)
  for key in ("mask_coef", "protos"):
    assert np.abs(full_grads[key]).max() > 0
    np.testing.assert_allclose(cropped_grads[key], full_grads[key], rtol=1e-4, atol=1e-7)


def test_crops_hold_boxes_at_the_map_edges():
  boxes = np.asarray([[-3.0, -2.0, 5.0, 6.0],     # starts off the map: crop at 0
                      [28.5, 29.2, 32.0, 33.0],   # runs off the far edge: crop ends at 32
                      [10.2, 10.0, 18.2, 17.0],   # cells 11..18 (8 columns): fits
                      [10.0, 10.0, 18.5, 12.0]])  # cells 10..18 (9 columns): does not fit
  np.testing.assert_array_equal(seg_loss.boxes_fit_windows(boxes, 8, 32, 32),
                                [True, True, True, False])


def test_crops_are_not_used_for_an_instance_with_more_positives_than_top_k():
  boxes = np.asarray([[[1.0, 1.0, 4.0, 4.0], [10.0, 10.0, 14.0, 14.0]]])  # both fit
  foreground = np.asarray([[True, True, True, False, True]])
  exact = lambda index, k: bool(seg_loss.cropped_mask_loss_is_exact(  # noqa: E731
      foreground, np.asarray([index]), boxes, per_instance=k, window=8, height=32, width=32))
  assert exact([0, 0, 1, 0, 1], k=2)      # 2 positives each
  assert not exact([0, 0, 0, 1, 1], k=2)  # instance 0 has 3
  assert exact([0, 0, 0, 1, 1], k=3)
