"""MAE pre-training task: smoke run through the engine, examples, evaluator, config errors."""

import os

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

import neuroseg_jax.tasks.mae_pretrain  # noqa: F401  (registers "mae_pretrain")
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.data import em_volumes, noise_matching
from neuroseg_jax.errors import ConfigError, DataError
from neuroseg_jax.models import mae as mae_lib
from neuroseg_jax.registry import UnknownNameError
from neuroseg_jax.losses.reconstruction import (masked_reconstruction_loss, predict_the_mean_loss,
                                                reconstruction_targets)
from neuroseg_jax.tasks.mae_pretrain import ReconstructionEvaluator, reconstruction_outputs
from neuroseg_jax.training import defaults
from neuroseg_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg):
  return config_loading.load_config(os.path.join(REPO, "configs", name) + ":" + arg)


def test_reference_setting_fields():
  config = _config("mae3d_pretrain.py", "")
  assert config.task == "mae_pretrain" and config.model.size == "base"
  assert tuple(config.model.patch_size) == (1, 16, 16) and tuple(config.data.crop) == (6, 96, 96)
  decoder = config.model
  assert (decoder.decoder_width, decoder.decoder_depth, decoder.decoder_num_heads) == (384, 8, 16)
  assert config.loss.norm_pix and config.model.mask_ratio == 0.9
  assert config.optimizer.name == "adamw" and config.optimizer.lr == 1e-4
  assert config.optimizer.schedule == "cosine"
  assert defaults.resolve_cadence(config).optimizer.warmup_steps == 100_000
  assert _config("mae3d_pretrain.py", "smoke,mask_ratio=0.5").model.mask_ratio == 0.5
  config_2d = _config("mae2d_pretrain.py", "")
  assert tuple(config_2d.model.patch_size) == (16, 16) and tuple(config_2d.data.crop) == (224, 224)


def test_smoke_run_logs_losses_and_writes_a_figure(tmp_path):
  config = _config("mae3d_pretrain.py", "smoke")
  loop.train(tasks.build(config), str(tmp_path), devices=jax.devices()[:1])
  records = loop.read_metrics(str(tmp_path))
  train = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3]
  # Norm-pix: predicting the mean (0) costs var / (var + 1e-6) ~ 1 per patch.
  assert all(0.99 < r["train/mean_baseline"] <= 1.0 and np.isfinite(r["train/loss"]) for r in train)
  val = [r for r in records if "val/reconstruction_loss" in r]
  assert len(val) == 1 and val[0]["step"] == 3
  assert val[0]["val/loss_over_baseline"] == pytest.approx(
      val[0]["val/reconstruction_loss"] / val[0]["val/mean_baseline"])
  image = np.asarray(Image.open(tmp_path / "figures" / "reconstructions.png"))
  assert image.shape[0] > 100 and image.std() > 5


def test_examples_and_validation_crops_2d():
  config = _config("mae2d_pretrain.py", "smoke")
  task = tasks.get_task("mae_pretrain")(config)
  a = task.make_example(5, np.random.default_rng(1))["image"]
  b = task.make_example(5, np.random.default_rng(1))["image"]
  assert a.shape == (16, 16, 1) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  mean, std = task.stats.mean, task.stats.std
  np.testing.assert_allclose(a, (np.clip(a * std + mean, 0, 1) - mean) / std, atol=1e-5)
  val = task.validation_images()
  assert val.shape == (4, 16, 16, 1)
  assert abs(val.mean()) < 0.5 and 0.5 < val.std() < 2.0
  np.testing.assert_array_equal(val, task.validation_images())  # fixed crops
  shapes = jax.eval_shape(task.init_variables, jax.random.key(0), {"image": val[:1]})
  assert shapes["params"]["decoder_pred"]["kernel"].shape == (16, 16)


def test_evaluator_weights_every_masked_patch_equally(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 2, 8, 8, 1)).astype(np.float32)
  prediction = rng.normal(size=(3, 8, 16)).astype(np.float32)
  mask = np.zeros((3, 8), np.float32)
  mask[0, :1], mask[1, :5], mask[2, 2:8] = 1, 1, 1  # unequal masked counts per crop
  outputs_fn = jax.jit(reconstruction_outputs, static_argnums=(3, 4))

  def predict_fn(prediction):
    """Serves consecutive rows to consecutive batches, as the model would."""
    served = []

    def predict(batch):
      start, size = sum(served), len(batch["image"])
      served.append(size)
      rows = slice(start, start + size)
      return jax.tree.map(np.asarray, outputs_fn(batch["image"], prediction[rows], mask[rows],
                                                 (1, 4, 4), True))

    return predict

  evaluator = ReconstructionEvaluator(images, 2, str(tmp_path / "r.png"), 1)
  scores = dict(evaluator.run(predict_fn(prediction)))
  patches = np.asarray(mae_lib.patchify(images, (1, 4, 4)))
  assert scores["val/reconstruction_loss"] == pytest.approx(
      float(masked_reconstruction_loss(prediction, patches, mask, norm_pix=True)), rel=1e-5)
  assert scores["val/mean_baseline"] == pytest.approx(
      float(predict_the_mean_loss(patches, mask, norm_pix=True)), rel=1e-5)
  perfect = np.asarray(reconstruction_targets(patches, norm_pix=True))
  outputs = outputs_fn(images, perfect, mask, (1, 4, 4), True)
  np.testing.assert_allclose(outputs["masked_error"], 0, atol=1e-8)
  np.testing.assert_allclose(outputs["reconstruction"], images, atol=1e-4)
  np.testing.assert_array_equal(outputs["masked_patches"], [1, 5, 6])
  assert (tmp_path / "r.png").exists()

def test_held_out_slab_along_x_and_binning():
  # smoke: simulated 8x48x48; binned 2x2x2 -> 4x24x24; the last 8 x-columns validate.
  task = tasks.get_task("mae_pretrain")(
      _config("mae3d_pretrain.py",
              "smoke,bin=2x2x2,val_axis=2,val_slices=8,crop=2x8x8,patch_size=1x4x4"))
  assert task.train_volume.shape == (4, 24, 16) and task.val_volume.shape == (4, 24, 8)
  full = task.train_volume.volume[:]
  np.testing.assert_array_equal(task.val_volume[:], full[:, :, 16:])
  assert task.validation_images().shape == (4, 2, 8, 8, 1)
  with pytest.raises(DataError, match="expected 0 \\(z\\), 1 \\(y\\) or 2 \\(x\\), got 3"):
    tasks.get_task("mae_pretrain")(_config("mae3d_pretrain.py", "smoke,val_axis=3"))


def test_low_pass_filter_applies_after_binning():
  task = tasks.get_task("mae_pretrain")(
      _config("mae3d_pretrain.py",
              "smoke,bin=2x2x2,lowpass_sigma=0.5x1x1,crop=2x8x8,patch_size=1x4x4"))
  filtered = task.train_volume.volume
  assert isinstance(filtered, em_volumes.GaussianFilteredVolume)
  assert filtered.sigma == (0.5, 1.0, 1.0)
  assert isinstance(filtered.volume, em_volumes.BinnedVolume)
  unfiltered = tasks.get_task("mae_pretrain")(
      _config("mae3d_pretrain.py", "smoke,bin=2x2x2,crop=2x8x8,patch_size=1x4x4"))
  assert not isinstance(unfiltered.train_volume.volume, em_volumes.GaussianFilteredVolume)
  with pytest.raises(ValueError, match="one sigma or three"):
    _config("mae3d_pretrain.py", "smoke,lowpass_sigma=1x2")


def test_config_errors():
  with pytest.raises(DataError, match="not tileable"):
    tasks.get_task("mae_pretrain")(_config("mae3d_pretrain.py", "smoke,crop=2x16x18"))
  with pytest.raises(DataError, match="must both be 3-D"):
    tasks.get_task("mae_pretrain")(_config("mae3d_pretrain.py", "smoke,crop=16x16"))
  with pytest.raises(DataError, match="needs a volume path"):
    tasks.get_task("mae_pretrain")(_config("mae3d_pretrain.py", "smoke,source=file"))
  with pytest.raises(UnknownNameError, match="valid choices: file, mitoem, simulator, snemi3d"):
    tasks.get_task("mae_pretrain")(_config("mae3d_pretrain.py", "smoke,source=nope"))
  with pytest.raises(ValueError, match="unknown config argument 'mask'"):
    _config("mae3d_pretrain.py", "smoke,mask=0.5")


def test_noisy_slices_are_blurred_to_the_reference_slices_noise(tmp_path):
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:48, :48]
  clean = 100 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
  stack = np.stack([clean + rng.normal(0, s, clean.shape) for s in (1, 1, 1, 1, 6, 6, 6, 6)])
  path = tmp_path / "stack.tif"
  tifffile.imwrite(path, stack.astype(np.float32))
  task = tasks.get_task("mae_pretrain")(_config(
      "mae2d_pretrain.py", f"smoke,source=file,path={path},val_slices=2,match_noise_to=0-3"))
  volume = np.concatenate([task.train_volume[:], task.val_volume[:]])
  np.testing.assert_array_equal(volume[:4], stack[:4].astype(np.float32))  # as clean: as stored
  target = noise_matching.stack_noise_level(stack[:4])
  matched = [noise_matching.noise_level(s) for s in volume[4:]]
  # (measured against the blurred slice's own, slightly narrower, intensity range)
  assert all(level <= target * 1.1 for level in matched), (matched, target)
  assert all(noise_matching.noise_level(s) > 3 * target for s in stack[4:])
  with pytest.raises(ConfigError, match="data.match_noise_to"):
    tasks.get_task("mae_pretrain")(_config(
        "mae2d_pretrain.py", f"smoke,source=file,path={path},match_noise_to=0-9"))
