"""Flip test-time augmentation: the passes map back onto the unflipped anchor grid."""

import numpy as np
import pytest

from neuroseg_jax.evaluation import flip_tta
from neuroseg_jax.models import box_geometry
from neuroseg_jax.models import yolo_decode

SIZE = 64  # input side: levels of 8 x 8, 4 x 4 and 2 x 2 anchors


def _random_outputs(rng, batch=2, nm=3, nc=1):
  anchors = sum(h * w for h, w in box_geometry.level_shapes((SIZE, SIZE)))
  return {"box_logits": rng.normal(size=(batch, anchors, 4 * box_geometry.REG_MAX)),
          "cls_logits": rng.normal(size=(batch, anchors, nc)),
          "mask_coef": rng.normal(size=(batch, anchors, nm)),
          "protos": rng.normal(size=(batch, SIZE // 4, SIZE // 4, nm))}


def _mirrored_outputs(outputs, rows, cols):
  """What a flip-equivariant network outputs for the flipped input, built level by
  level with np.flip (independently of the module's permutation)."""
  levels, start = [], 0
  flips = tuple(axis for axis, flip in ((1, rows), (2, cols)) if flip)
  for height, width in box_geometry.level_shapes((SIZE, SIZE)):
    levels.append((start, height, width))
    start += height * width
  mirrored = {}
  for key in ("box_logits", "cls_logits", "mask_coef"):
    value = outputs[key]
    parts = []
    for start, height, width in levels:
      grid = value[:, start:start + height * width].reshape(len(value), height, width, -1)
      grid = np.flip(grid, flips) if flips else grid
      parts.append(grid.reshape(len(value), height * width, -1))
    mirrored[key] = np.concatenate(parts, axis=1)
  sides = mirrored["box_logits"].reshape(*mirrored["box_logits"].shape[:2], 4, -1)
  if cols:
    sides = sides[:, :, [2, 1, 0, 3]]
  if rows:
    sides = sides[:, :, [0, 3, 2, 1]]
  mirrored["box_logits"] = sides.reshape(mirrored["box_logits"].shape)
  mirrored["protos"] = np.flip(outputs["protos"], flips) if flips else outputs["protos"]
  return mirrored


def _decode(outputs):
  return {k: np.asarray(v) for k, v in yolo_decode.decode_predictions(
      {k: np.asarray(v, np.float32) for k, v in outputs.items()}, (SIZE, SIZE)).items()}


@pytest.mark.parametrize("rows,cols", [(False, True), (True, False), (True, True)])
def test_mirrored_outputs_decode_to_mirrored_boxes(rows, cols):
  """The test's mirror is what a flipped input's predictions look like: anchor perm[a]
  of the flipped pass holds anchor a's box, mirrored."""
  outputs = _random_outputs(np.random.default_rng(0))
  boxes = _decode(outputs)["boxes_xyxy"]
  flipped = _decode(_mirrored_outputs(outputs, rows, cols))["boxes_xyxy"]
  perm = flip_tta.anchor_permutation((SIZE, SIZE), rows, cols)
  expected = boxes.copy()
  if cols:
    expected[..., [0, 2]] = SIZE - boxes[..., [2, 0]]
  if rows:
    expected[..., [1, 3]] = SIZE - boxes[..., [3, 1]]
  np.testing.assert_allclose(flipped[:, perm], expected, atol=1e-4)


def test_an_equivariant_network_gets_its_own_answer_back():
  """If every flip of the input gives the mirrored outputs, the merged outputs decode
  to the unflipped boxes, scores and mask logits (4x the prototypes)."""
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  outputs = _random_outputs(rng)
  seen = []

  def equivariant_predict(batch):
    for rows, cols in flip_tta.FLIPS:
      axes = tuple(a for a, f in ((1, rows), (2, cols)) if f)
      if np.array_equal(batch["image"], np.flip(images, axes) if axes else images):
        seen.append((rows, cols))
        return _mirrored_outputs(outputs, rows, cols)
    raise AssertionError("the batch is no flip of the input")

  merged = flip_tta.with_flips(equivariant_predict)({"image": images})
  assert sorted(seen) == sorted(flip_tta.FLIPS)
  want, got = _decode(outputs), _decode(merged)
  np.testing.assert_allclose(got["boxes_xyxy"], want["boxes_xyxy"], atol=1e-4)
  np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
  assert merged["protos"].shape[-1] == 4 * outputs["protos"].shape[-1]
  logits = np.einsum("bam,bhwm->bahw", got["mask_coef"], got["protos"])
  np.testing.assert_allclose(logits, np.einsum("bam,bhwm->bahw", want["mask_coef"],
                                               want["protos"]), atol=1e-4)


def test_disagreeing_passes_are_averaged():
  """Two passes with different class logits: the merged probability is their mean."""
  rng = np.random.default_rng(2)
  first, second = _random_outputs(rng), _random_outputs(rng)
  passes = [flip_tta.unflip_outputs(o, (SIZE, SIZE), False, False) for o in (first, second)]
  merged = flip_tta.merge_passes(passes)
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  np.testing.assert_allclose(sigmoid(merged["cls_logits"]),
                             (sigmoid(first["cls_logits"]) + sigmoid(second["cls_logits"])) / 2,
                             atol=1e-5)
  ltrb = lambda o: _decode(o)["boxes_xyxy"]
  np.testing.assert_allclose(ltrb(merged), (ltrb(first) + ltrb(second)) / 2, atol=1e-3)
