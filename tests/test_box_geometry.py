"""Box geometry: IoU and CIoU against hand-computed values, distances <-> boxes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax.models import box_geometry

ciou = jax.jit(box_geometry.complete_iou)


def test_ciou_of_identical_boxes_is_one():
  boxes = jnp.asarray([[0.0, 0.0, 2.0, 2.0], [3.0, 1.0, 10.0, 4.0]])
  np.testing.assert_allclose(ciou(boxes, boxes), [1.0, 1.0], atol=1e-6)


def test_ciou_same_aspect_offset_boxes():
  # IoU = 1/7; enclosing box 3x3 -> c^2 = 18; centres (1,1),(2,2) -> rho^2 = 2; v = 0.
  value = ciou(jnp.asarray([0.0, 0, 2, 2]), jnp.asarray([1.0, 1, 3, 3]))
  np.testing.assert_allclose(value, 1 / 7 - 2 / 18, rtol=1e-5)


def test_ciou_with_aspect_ratio_term():
  # 2x1 and 1x2 boxes sharing a corner: inter 1, union 3, enclosing 2x2 -> c^2 = 8,
  # centres (1, .5), (.5, 1) -> rho^2 = .5; v = 4/pi^2 (atan(1/2) - atan(2))^2.
  iou = 1 / 3
  v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0))**2
  expected = iou - (0.5 / 8 + v * v / (v - iou + 1))
  value = ciou(jnp.asarray([0.0, 0, 2, 1]), jnp.asarray([0.0, 0, 1, 2]))
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_ciou_gradient_is_finite_and_moves_box_towards_target():
  target = jnp.asarray([2.0, 2.0, 6.0, 5.0])
  pred = jnp.asarray([3.0, 1.0, 8.0, 4.0])
  grad = jax.jit(jax.grad(lambda p: 1 - box_geometry.complete_iou(p, target)))(pred)
  assert np.all(np.isfinite(grad))
  stepped = pred - 0.1 * grad
  assert ciou(stepped, target) > ciou(pred, target)


@pytest.mark.parametrize("as_jax", [False, True])
def test_pairwise_box_iou(as_jax):
  a = np.asarray([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
  b = np.asarray([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 5, 5]], np.float32)
  expected = [[1 / 7, 1, 0], [0, 1 / 4, 0]]
  iou_fn = box_geometry.pairwise_box_iou
  if as_jax:
    a, b, iou_fn = jnp.asarray(a), jnp.asarray(b), jax.jit(iou_fn)
  iou = iou_fn(a, b)
  assert isinstance(iou, jax.Array) == as_jax
  np.testing.assert_allclose(np.asarray(iou), expected, rtol=1e-6)


def test_xyxy_to_ltrb_inverts_decode():
  points = jnp.asarray([[3.5, 2.5], [0.5, 0.5]])
  ltrb = jnp.asarray([[1.0, 2.0, 3.0, 0.5], [0.25, 0.0, 7.0, 1.5]])
  boxes = box_geometry.distances_to_xyxy(ltrb, points)
  np.testing.assert_allclose(jax.jit(box_geometry.xyxy_to_ltrb)(points, boxes), ltrb, atol=1e-6)
