"""`neuroseg-jax train-em`, `segment-em` and `pretrain-em` on a tiny synthetic membrane data set.

The data: 4 slices of 64 x 64 Voronoi cells whose labels are ISBI-2012-like membrane
maps (0 on 2-px membranes, 255 inside) and whose images show the membranes dark
with noise. Training is the smoke scale for 2 steps, so the scores mean nothing;
what is checked is the model folder, the streamed outputs (shape, dtype, ids
unique over the stack, slab streaming equal to predicting the whole volume) and
that bad input ends in one `error:` line naming the path, exit code 2.
"""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from neuroseg_jax import cli
from neuroseg_jax import em_predictor
from neuroseg_jax import model_folder
from neuroseg_jax import predictor
from neuroseg_jax.commands import pretrain_em
from neuroseg_jax.commands import train_em
from neuroseg_jax.data import intensity, noise_matching

SIZE, DEPTH = 64, 4


def _membrane_slice(rng) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 [H, W], membrane label uint8 [H, W]: 0 membrane, 255 interior)."""
  seeds = rng.uniform(0, SIZE, (12, 2))
  yx = np.stack(np.mgrid[:SIZE, :SIZE], -1).astype(np.float32)
  cells = np.argmin(((yx[:, :, None] - seeds) ** 2).sum(-1), -1)
  edge = np.zeros(cells.shape, bool)
  edge[:-1] |= cells[:-1] != cells[1:]
  edge[:, :-1] |= cells[:, :-1] != cells[:, 1:]
  membrane = ndimage.binary_dilation(edge)
  image = np.where(membrane, 60.0, 190.0) + rng.normal(0, 15, cells.shape)
  return np.clip(image, 0, 255).astype(np.uint8), np.where(membrane, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def membrane_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("em_data")
  rng = np.random.default_rng(0)
  for name in ("image", "label", "unlabeled"):
    (root / name).mkdir()
  for z in range(DEPTH):
    image, label = _membrane_slice(rng)
    Image.fromarray(image).save(root / "image" / f"{z}.png")
    Image.fromarray(label).save(root / "label" / f"{z}.png")
    Image.fromarray(_membrane_slice(rng)[0]).save(root / "unlabeled" / f"{z}.png")
  return root


def _fails(capsys, argv, *fragments) -> str:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: "), err
  for fragment in fragments:
    assert fragment in last, (fragment, last)
  return last


def test_train_em_then_segment_em(membrane_data, tmp_path, capsys):
  model_dir = tmp_path / "model"
  cli.main(["train-em", "--data", str(membrane_data), "--out", str(model_dir), "--scale", "smoke",
            "--steps", "2", "--train-slices", "0-1", "--tune-slices", "2", "--val-slices", "3",
            "--merge", "--seed", "3"])
  printed = capsys.readouterr().out
  assert "val_arand" in printed and f"model written to {model_dir}" in printed
  spec = json.loads((model_dir / "model.json").read_text())
  assert spec["kind"] == "em_slice_boundary" and spec["architecture"]["name"] == "unet"
  assert spec["window"] == [32, 32] and spec["voxel_size"] is None
  train_stack = np.stack([np.asarray(Image.open(membrane_data / "image" / f"{z}.png"))
                          for z in (0, 1)])
  assert spec["noise_level"] == pytest.approx(noise_matching.stack_noise_level(train_stack))
  assert set(spec["watershed"]) == {"seed_threshold", "min_seed_size", "smoothing", "seed_erosion",
                                    "merge_threshold", "seed_quantile"}
  assert spec["scores"]["train_slices"] == "0-1" and spec["scores"]["val_slices"] == "3"
  assert spec["scores"]["tune_slices"] == "2"
  assert 0.0 <= spec["scores"]["val_arand"] <= 1.0
  card = (model_dir / "MODEL_CARD.md").read_text()
  assert json.loads((model_dir / "run" / "config.json").read_text())["seed"] == 3
  for fragment in (str(membrane_data / "image"), "training slices 0-1", "tuned on slices 2",
                   "seed 3", "Intended use",
                   "Hardware", "neuroseg-jax train-em", "val_voi_merge"):
    assert fragment in card, fragment

  stack = np.stack([np.asarray(Image.open(membrane_data / "image" / f"{z}.png"))
                    for z in range(DEPTH)])
  tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
  out = tmp_path / "seg"
  cli.main(["segment-em", str(tmp_path / "stack.tif"), "--model", str(model_dir), "--out",
            str(out), "--slab", "3", "--labels", str(membrane_data / "label")])
  assert "mean adapted Rand error" in capsys.readouterr().out
  labels = tifffile.imread(out / "labels.tif")
  boundary = tifffile.imread(out / "boundary.tif")
  assert labels.shape == boundary.shape == stack.shape
  assert labels.dtype == np.uint32 and boundary.dtype == np.uint8
  ids = [set(np.unique(s)) for s in labels]
  assert all(not ids[a] & ids[b] for a in range(DEPTH) for b in range(a)), "ids repeat over z"
  assert 0 not in set().union(*ids), "every pixel belongs to a cell"
  summary = json.loads((out / "segmentation.json").read_text())
  assert summary["shape"] == list(stack.shape)
  assert summary["instances_per_slice"] == [len(s) for s in ids]
  assert summary["noise_blur_per_slice"] == [0.0] * DEPTH  # as noisy as the training slices
  assert summary["watershed"] == spec["watershed"]
  assert set(summary["scores"]) == {"arand", "voi_split", "voi_merge"}
  assert len(summary["scores_per_slice"]["arand"]) == DEPTH
  # Streaming in slabs of 3 gives what the whole volume at once gives.
  model = em_predictor.load_em_model(str(model_dir))
  whole = model.boundary(stack)
  assert np.abs(boundary.astype(int) - np.round(255 * whole)).max() <= 1
  # A second model of the same architecture reuses the compiled forward pass.
  again = em_predictor.EMBoundaryModel(model_folder.read(str(model_dir)), "copy")
  assert again._forward is model._forward  # pylint: disable=protected-access

  # A slice much noisier than the training slices is blurred first, and only that one.
  noisy = stack.astype(np.float32)
  noisy[2] += np.random.default_rng(5).normal(0, 40, noisy[2].shape)
  tifffile.imwrite(tmp_path / "noisy.tif", np.clip(noisy, 0, 255).astype(np.uint8),
                   photometric="minisblack")
  cli.main(["segment-em", str(tmp_path / "noisy.tif"), "--model", str(model_dir), "--out",
            str(tmp_path / "seg_noisy")])
  assert "1 slices noisier than the training slices were blurred" in capsys.readouterr().out
  sigmas = json.loads((tmp_path / "seg_noisy" / "segmentation.json").read_text())[
      "noise_blur_per_slice"]
  assert sigmas[2] > 0 and sigmas[:2] + sigmas[3:] == [0.0] * (DEPTH - 1)


def test_train_em_tunes_on_out_of_fold_maps(membrane_data, tmp_path, capsys, monkeypatch):
  tuned_on = []
  tune = train_em.slice_segmentation.tune_watershed
  monkeypatch.setattr(train_em.slice_segmentation, "tune_watershed",
                      lambda boundary, gt, grid: tuned_on.append((boundary, gt)) or tune(
                          boundary, gt, grid))
  monkeypatch.setattr(train_em.loop, "training_seconds", lambda run_dir: 60.0)
  model_dir = tmp_path / "model"
  cli.main(["train-em", "--data", str(membrane_data), "--out", str(model_dir), "--scale", "smoke",
            "--steps", "2", "--train-slices", "0-2", "--val-slices", "3", "--tune-folds", "3"])
  capsys.readouterr()
  for k, rest in enumerate(("1-2", "0+2", "0-1")):  # each fold model trained on the others
    config = json.loads((model_dir / f"run_fold{k}" / "config.json").read_text())
    assert config["data"]["train_slices"] == rest
  (boundary, gt), = tuned_on
  labels = np.stack([np.asarray(Image.open(membrane_data / "label" / f"{z}.png"))
                     for z in range(3)])
  assert boundary.shape == gt.shape == (3, SIZE, SIZE)
  np.testing.assert_array_equal(gt > 0, labels > 0)  # the training slices, in order
  full = em_predictor.load_em_model(str(model_dir))
  images = np.stack([np.asarray(Image.open(membrane_data / "image" / f"{z}.png"))
                     for z in range(DEPTH)])
  own = full.boundary(images, intensity.intensity_stats(images))[:3]
  assert np.abs(boundary - own).max() > 1e-3  # not the full model's maps of its own slices
  spec = json.loads((model_dir / "model.json").read_text())
  assert spec["scores"]["tune_slices"] == "0-2, out of fold (3 folds)"
  card = (model_dir / "MODEL_CARD.md").read_text()
  assert "out of fold (3 folds)" in card
  assert "Training wall time: 4.0 min" in card  # 1 min per run: the fold models count too


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_pretrain_em_config_has_the_vit_of_train_em(membrane_data, scale):
  # (A 2-step smoke pre-training run takes 15-30 s on 2 cores, mostly compiling: not run here.)
  folders = [str(membrane_data / "unlabeled"), str(membrane_data / "image")]
  config = pretrain_em.pretrain_config(folders, num_steps=2, scale=scale)
  assert config.data.path == "+".join(folders) and config.num_steps == 2
  assert config.data.val_slices == 1  # 8 slices: a fifth, not the isbi variant's 5
  unetr = train_em.recipe_config(folders[1], str(membrane_data / "label"), "unetr",
                                 scale=scale)
  for field in ("size", "patch_size", "use_class_token"):
    assert config.model[field] == unetr.model[field], field
  assert config.data.crop == unetr.data.crop
  assert unetr.optimizer.layer_decay == 1.0  # from scratch: one learning rate
  run = membrane_data / f"mae_{scale}"
  run.mkdir()
  (run / "config.json").write_text(config.to_json())
  tuned = train_em.recipe_config(folders[1], str(membrane_data / "label"), "unetr",
                                 pretrained=str(run), scale=scale)
  assert tuned.optimizer.layer_decay == train_em.PRETRAINED_LAYER_DECAY < 1.0


def test_segment_em_missing_input(capsys, tmp_path):
  _fails(capsys, ["segment-em", str(tmp_path / "nope.tif"), "--model", str(tmp_path), "--out",
                  str(tmp_path / "out")], str(tmp_path / "nope.tif"), "no such file")
  assert not (tmp_path / "out").exists()


def test_train_em_without_image_folder(capsys, tmp_path):
  (tmp_path / "label").mkdir()
  _fails(capsys, ["train-em", "--data", str(tmp_path), "--out", str(tmp_path / "model")],
         str(tmp_path), "no image volume", "image/")
  assert not (tmp_path / "model").exists()


def test_train_em_tuning_slices_may_not_overlap(capsys, membrane_data, tmp_path):
  base = ["train-em", "--data", str(membrane_data), "--out", str(tmp_path / "m"), "--scale",
          "smoke", "--steps", "1"]
  _fails(capsys, base + ["--tune-slices", "3", "--val-slices", "3"], "--tune-slices 3",
         "overlaps --val-slices 3")
  _fails(capsys, base + ["--train-slices", "0-2", "--tune-slices", "2"], "--tune-slices 2",
         "overlaps --train-slices 0-2")
  _fails(capsys, base + ["--tune-slices", "2", "--tune-folds", "2"], "--tune-slices or --tune-folds")
  _fails(capsys, base + ["--train-slices", "0-2", "--tune-folds", "4"],
         "--tune-folds must be from 2 to the 3 training slices, got 4")


def test_train_em_bad_pretrained_is_one_line(capsys, membrane_data, tmp_path):
  out = tmp_path / "model"
  _fails(capsys, ["train-em", "--data", str(membrane_data), "--out", str(out),
                  "--pretrained", str(tmp_path)], "--pretrained needs --model unetr")
  mae = tmp_path / "mae"  # a full-scale MAE run's config: its ViT is not the smoke UNETR's
  mae.mkdir()
  (mae / "config.json").write_text(json.dumps({
      "model": {"size": "mini", "patch_size": [16, 16], "use_class_token": True},
      "data": {"crop": [128, 128]}}))
  _fails(capsys, ["train-em", "--data", str(membrane_data), "--out", str(out), "--model",
                  "unetr", "--scale", "smoke", "--pretrained", str(mae)], str(mae), "--scale smoke")
  assert not out.exists()


@pytest.mark.parametrize("kind", ["two_photon", "not_a_model"])
def test_segment_em_rejects_other_model_folders(capsys, membrane_data, tmp_path, kind):
  model = predictor.BUILTIN_MODELS["builtin"] if kind == "two_photon" else str(tmp_path)
  expected = "not an EM boundary model" if kind == "two_photon" else "not a model folder"
  _fails(capsys, ["segment-em", str(membrane_data / "image"), "--model", model, "--out",
                  str(tmp_path / "out")], model, expected)
