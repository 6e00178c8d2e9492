"""2-D augmentations: image and masks stay aligned; each op does what it says."""

import numpy as np
import pytest

from neuroseg_jax.data.transforms2d import crop_and_resize, parse_transforms
from neuroseg_jax.registry import UnknownNameError


@pytest.fixture
def example():
  """Image whose channel 0 paints instance i with value i + 1 (so it must move
  with the masks); channel 1 is random texture."""
  masks = np.zeros((3, 24, 32), bool)
  masks[0, 2:6, 3:9] = True
  masks[1, 12:20, 20:30] = True
  masks[2, 15:18, 2:5] = True
  painted = (masks * np.arange(1, 4)[:, None, None]).sum(0)
  texture = np.random.default_rng(0).random((24, 32))
  return {"image": np.stack([painted, texture], -1).astype(np.float32), "masks": masks,
          "name": "toy"}


def painted_from_masks(masks, labels=(1, 2, 3)):
  return (masks * np.asarray(labels)[:len(masks), None, None]).sum(0)


@pytest.mark.parametrize("spec", ["flip_lr", "flip_ud", "rot90", "flip_lr|rot90|flip_ud"])
def test_exact_geometric_ops_keep_alignment(example, spec):
  op = parse_transforms(spec)
  moved = 0
  for seed in range(20):
    out = op(example, np.random.default_rng(seed))
    np.testing.assert_array_equal(out["image"][..., 0], painted_from_masks(out["masks"]))
    assert out["name"] == "toy" and out["masks"].dtype == bool
    moved += not np.array_equal(out["image"], example["image"])
  assert 5 <= moved < 20  # random: sometimes applied, sometimes not.


def test_flip_lr_is_a_mirror(example):
  for seed in range(10):
    out = parse_transforms("flip_lr")(example, np.random.default_rng(seed))
    if not np.array_equal(out["masks"], example["masks"]):
      np.testing.assert_array_equal(out["masks"], example["masks"][:, :, ::-1])
      np.testing.assert_array_equal(out["image"], example["image"][:, ::-1])
      return
  pytest.fail("flip_lr never flipped in 10 draws")


def test_rot90_changes_shape_of_non_square(example):
  shapes = {parse_transforms("rot90")(example, np.random.default_rng(s))["masks"].shape
            for s in range(12)}
  assert shapes == {(3, 24, 32), (3, 32, 24)}


def test_crop_and_resize_by_two_repeats_pixels(example):
  out = crop_and_resize({"masks": example["masks"], "image": example["image"]},
                        (0, 0, 12, 16), (24, 32))  # the top-left quarter, doubled.
  expected = example["masks"][:, :12, :16].repeat(2, 1).repeat(2, 2)
  keep = expected.reshape(3, -1).any(1)
  np.testing.assert_array_equal(out["masks"], expected[keep])
  assert len(out["masks"]) == 1  # instances 2 and 3 lie outside the window: dropped.


@pytest.mark.parametrize("spec", ["scale_crop(0.5, 1.5)", "resized_crop(0.3, 1.0)"])
def test_interpolating_ops_keep_alignment(example, spec):
  op = parse_transforms(spec)
  union = example["masks"].any(0).astype(np.float32)
  example = {**example, "image": np.stack([union, example["image"][..., 1]], -1)}
  for seed in range(6):
    out = op(example, np.random.default_rng(seed))
    assert out["image"].shape == (24, 32, 2)
    inside = out["image"][..., 0] > 0.5  # bilinear union vs nearest-neighbour masks.
    union = out["masks"].any(0)
    assert (inside == union).mean() > 0.95
    assert len(out["masks"]) <= 3 and out["masks"].reshape(len(out["masks"]), -1).any(1).all()


def test_resized_crop_has_fixed_size(example):
  op = parse_transforms("resized_crop(0.1, 0.5, size=16)|flip_lr")
  for seed in range(5):
    out = op(example, np.random.default_rng(seed))
    assert out["image"].shape == (16, 16, 2) and out["masks"].shape[1:] == (16, 16)
  rect = parse_transforms("resized_crop(0.5, 1.0, size=(8, 12))")(example, np.random.default_rng(0))
  assert rect["image"].shape == (8, 12, 2)


def test_photometric_ops(example):
  image, rng = example["image"], np.random.default_rng(0)
  bright = parse_transforms("brightness(0.2)")(example, rng)
  shift = bright["image"] - image
  assert np.allclose(shift, shift.flat[0], atol=1e-6) and abs(shift.flat[0]) <= 0.2
  assert bright["masks"] is example["masks"]
  contrasted = parse_transforms("contrast(0.5)")(example, rng)["image"]
  np.testing.assert_allclose(contrasted.mean((0, 1)), image.mean((0, 1)), rtol=1e-5)
  unit = {"image": np.random.default_rng(1).random((8, 8, 1)).astype(np.float32)}
  gamma = parse_transforms("gamma(0.7, 1.5)")(unit, rng)["image"]
  exponent = np.log(gamma[0, 0, 0]) / np.log(unit["image"][0, 0, 0])
  np.testing.assert_allclose(gamma, unit["image"] ** exponent, rtol=1e-4)
  flat = {"image": np.full((40, 40, 1), 0.5, np.float32)}
  noisy = parse_transforms("noise(0.1)")(flat, rng)["image"]
  assert 0 < noisy.std() <= 0.1 * 1.1 and abs(noisy.mean() - 0.5) < 0.01
  blurred = parse_transforms("blur(0.5, 1.5)")(example, rng)["image"]
  assert blurred[..., 1].std() < image[..., 1].std()  # texture smoothed.
  np.testing.assert_allclose(blurred.mean(), image.mean(), rtol=0.02)
  for out in (bright, contrasted, gamma, noisy, blurred):
    out = out["image"] if isinstance(out, dict) else out
    assert out.dtype == np.float32


def test_probability_and_determinism(example):
  never = parse_transforms("flip_lr(p=0.0)|brightness(0.3, p=0)")
  assert never(example, np.random.default_rng(0)) is example
  always = parse_transforms("brightness(0.3, p=1.0)")
  assert not np.array_equal(always(example, np.random.default_rng(0))["image"], example["image"])
  full = parse_transforms("flip_lr|rot90|scale_crop(0.5,1.5)|contrast(0.2)|noise(0.05)")
  a, b = (full(example, np.random.default_rng(3)) for _ in range(2))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["masks"], b["masks"])


def test_parse_errors():
  with pytest.raises(UnknownNameError, match="unknown 2-D transform 'flip_diag'"):
    parse_transforms("flip_lr|flip_diag")
  with pytest.raises(ValueError, match=r"cannot parse transform 'blur\(0.5,'"):
    parse_transforms("blur(0.5,")
  assert parse_transforms("")({"image": 1}, np.random.default_rng(0)) == {"image": 1}
