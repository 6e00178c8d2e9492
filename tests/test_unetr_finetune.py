"""UNETR fine-tuning task: smoke training end to end, MAE encoder transfer, label fraction."""

import os

import jax
import numpy as np
import pytest
import tifffile

from neuroseg_jax import config_loading
from neuroseg_jax import tasks
from neuroseg_jax.errors import DataError
from neuroseg_jax.models import mae as mae_lib
from neuroseg_jax.models import vit
from neuroseg_jax.tasks import unetr_finetune
from neuroseg_jax.training import checkpointing, loop, transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "unetr3d_finetune.py")


def _config(arg):
  return config_loading.load_config(f"{CONFIG}:{arg}")


def _numpy_variables(init, *args):
  """Variables with the shapes `init(*args)` would give, filled in NumPy (no compile):
  N(0, 1/fan_in) weights, BatchNorm variances 1."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if jax.tree_util.keystr(path[-1:]) == "['var']":
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(init, *args))


def test_smoke_config_trains_and_evaluates(tmp_path):
  config = _config("smoke")
  loop.train(tasks.build(config), str(tmp_path), devices=jax.devices()[:1])
  records = loop.read_metrics(str(tmp_path))
  train = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3]
  assert all(np.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in train)
  evals = [r for r in records if "val/arand" in r]
  assert len(evals) == 1 and evals[0]["step"] == 3
  assert 0.0 <= evals[0]["val/arand"] <= 1.0
  assert evals[0]["val/voi_split"] >= 0 and evals[0]["val/voi_merge"] >= 0


def _save_mae_checkpoint(directory, width):
  """An MAE state {"step", "params"} as the MAE pre-training run writes it."""
  size = vit.VIT_SIZES.get("mu")
  model = mae_lib.MAE(width=width, depth=size["depth"], num_heads=size["num_heads"],
                      patch_size=(2, 4, 4), decoder_width=16, decoder_depth=1,
                      decoder_num_heads=2)
  x = np.zeros((1, 4, 16, 16, 1), np.float32)
  variables = _numpy_variables(
      lambda: model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, x))
  checkpointer = checkpointing.Checkpointer(str(directory), asynchronous=False)
  checkpointer.save(5, {"step": np.int32(5), "params": variables["params"]})
  checkpointer.wait()
  checkpointer.close()
  return variables["params"]


def _task_and_variables(config):
  task = tasks.get_task(config.task)(config)
  example = jax.tree.map(lambda x: x[None], task.make_example(0, np.random.default_rng(0)))
  variables = _numpy_variables(task.init_variables, jax.random.key(0), example)
  return task, variables.pop("params"), variables


def test_pretrained_encoder_is_loaded_and_counted(tmp_path):
  mae_params = _save_mae_checkpoint(tmp_path / "mae" / "checkpoints", vit.VIT_SIZES.get("mu")["width"])
  config = _config(f"smoke,pretrained={tmp_path / 'mae'}")
  task, params, model_state = _task_and_variables(config)
  loaded, count = unetr_finetune.load_encoder(params, config.model.pretrained)
  assert count == len(jax.tree.leaves(params["encoder"])) == len(jax.tree.leaves(mae_params["encoder"]))
  new_params, new_state = task.load_pretrained(params, model_state)
  for a, b in zip(jax.tree.leaves(new_params["encoder"]), jax.tree.leaves(mae_params["encoder"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(new_params)):
    np.testing.assert_array_equal(a, b)
  # The decoder is untouched.
  np.testing.assert_array_equal(new_params["head"]["kernel"], params["head"]["kernel"])
  assert new_state is model_state
  assert task.load_pretrained(params, model_state) is not None
  assert tasks.get_task("unetr_finetune")(_config("smoke")).load_pretrained(params, model_state) is None


def test_mismatched_encoder_fails_with_the_differences(tmp_path):
  _save_mae_checkpoint(tmp_path / "wide", width=48)  # the fine-tuning encoder is 32 wide
  config = _config(f"smoke,pretrained={tmp_path / 'wide'}")
  task, params, model_state = _task_and_variables(config)
  n = len(jax.tree.leaves(params["encoder"]))
  with pytest.raises(transfer.TransferError,
                     match=rf"(?s)\({n} arrays in the model, {n} in the checkpoint\).*"
                     rf"shape mismatch \({n}\).*model \(32, 2, 16\) vs \S+ \(48, 2, 24\)"):
    task.load_pretrained(params, model_state)
  with pytest.raises(FileNotFoundError, match="no pre-training checkpoint"):
    unetr_finetune.load_encoder(params, str(tmp_path / "missing"))


def _write_volume(tmp_path, depth=20, size=24):
  """Labeled TIFF pair whose stored values reveal both the z and the label of a voxel.

  raw = 100 * z + 10 * label + 1 (+ 0..2 of in-plane texture), uint16, so the
  intensity percentiles are the extreme values and scaling clips nothing. Instances:
  1 = a column at z < 18; 2 (z >= 17) and 3 (z < 16) share one in-plane box, so a
  z-shifted test region (z >= 16) would not match its labels.
  """
  labels = np.zeros((depth, size, size), np.uint32)
  labels[:18, 2:10, 2:10] = 1
  labels[17:, 12:22, 4:20] = 2
  labels[:16, 12:22, 4:20] = 3
  raw = 10 * labels + (100 * np.arange(depth) + 1)[:, None, None] + (np.arange(size) % 3)
  tifffile.imwrite(tmp_path / "raw.tif", raw.astype(np.uint16))
  tifffile.imwrite(tmp_path / "labels.tif", labels)
  return labels


def _file_task(tmp_path, **extra):
  args = "".join(f",{k}={v}" for k, v in extra.items())
  config = _config(f"smoke,source=file,path={tmp_path / 'raw.tif'},"
                   f"labels_path={tmp_path / 'labels.tif'},split_z=16{args}")
  config.data.augment = False
  task = tasks.get_task(config.task)(config)
  assert (task.stats.low, task.stats.high) == (1, 10 * 2 + 100 * 19 + 3)  # nothing is clipped
  return task


def _stored(task, image):
  """Undoes the task's standardisation and scaling: [...] input -> stored values (rounded)."""
  stats = task.stats
  scaled = image * stats.std + stats.mean
  return np.round(scaled * (stats.high - stats.low) + stats.low).astype(np.int64)


def _crop_z_values(task, n=40):
  """The distinct z of all voxels seen by n training crops."""
  seen = set()
  for i in range(n):
    stored = _stored(task, task.make_example(i, np.random.default_rng(i))["image"][..., 0])
    seen.update(np.unique(stored // 100).tolist())
  return seen


def test_label_fraction_limits_training_crops_to_the_first_slices(tmp_path):
  _write_volume(tmp_path)
  whole, half = _file_task(tmp_path), _file_task(tmp_path, label_fraction=0.5)
  assert (whole.labeled_depth, whole.split) == (16, 16)
  assert (half.labeled_depth, half.split) == (8, 16)
  assert _crop_z_values(half) == set(range(8))    # round(0.5 * 16) slices, all reached
  assert _crop_z_values(whole) == set(range(16))  # never the test slices 16..19
  with pytest.raises(DataError, match="fewer than the crop depth"):
    _file_task(tmp_path, label_fraction=0.1)
  with pytest.raises(DataError, match="leaves no training or no test slices"):
    _file_task(tmp_path, split_z=20)


@pytest.mark.parametrize("target, expected", [
    ("affinities", {"val/arand": 0.0, "val/voi_split": 0.0, "val/voi_merge": 0.0}),
    ("binary_contour", {"val/ap75": 1.0, "val/ap50": 1.0, "val/dice": 1.0}),
])
def test_targets_line_up_with_images_and_the_test_region(tmp_path, target, expected):
  labels = _write_volume(tmp_path)
  task = _file_task(tmp_path, target=target)
  example = task.make_example(0, np.random.default_rng(0))
  crop_labels = _stored(task, example["image"][..., 0]) % 100 // 10
  target_now, _ = task.target.make(crop_labels)
  np.testing.assert_array_equal(example["target"], target_now)
  assert example["target"].shape == (4, 16, 16, task.target.channels)

  def oracle(batch):
    """The task's own targets of each window's labels (read off the stored values)."""
    return np.stack([task.target.make(window % 100 // 10)[0]
                     for window in np.round(batch["image"][..., 0]).astype(np.int64)])

  (evaluator,) = task.evaluators(str(tmp_path))
  np.testing.assert_array_equal(evaluator.labels, labels[16:])
  scores = dict(evaluator.run(oracle))
  for name, value in expected.items():
    assert scores[name] == pytest.approx(value, abs=1e-6), name


def test_predict_scales_stored_values_like_the_training_crops(tmp_path):
  _write_volume(tmp_path)
  task = _file_task(tmp_path)
  example = task.make_example(3, np.random.default_rng(3))
  stored = _stored(task, example["image"])[None].astype(np.float32)
  variables = _numpy_variables(task.init_variables, jax.random.key(0), {"image": example["image"][None]})
  params = variables.pop("params")

  @jax.jit
  def both(params, variables):
    logits = task.model.apply({"params": params, **variables}, example["image"][None])
    return task.predict_fn(params, variables, {"image": stored}), jax.nn.sigmoid(logits)

  predicted, expected = both(params, variables)
  assert np.all(np.isfinite(expected)) and 0.01 < np.std(expected)  # not saturated
  np.testing.assert_allclose(predicted, expected, atol=1e-5)



def test_affinity_targets_do_not_depend_on_the_label_dtype():
  target = unetr_finetune.TARGETS.get("affinities")(_config("smoke"))
  labels = np.zeros((2, 6, 6), np.uint32)
  labels[:, :3, :3], labels[:, 3:, :] = 7, 9  # 7 touches 9 (eroded apart) and background
  expected, mask = target.make(labels)
  # The eroded seam: rows 2 and 3 (both sides of the 7 | 9 contact) lose their labels.
  assert expected[0, 1, 1, 1] == 1 and expected[0, 2, 1, 1] == 0 and expected[0, 4, 1, 1] == 0
  assert expected[0, 5, 1, 1] == 1 and mask[0, 0, 1, 1] == 0 and mask[0, 1, 1, 1] == 1
  for dtype in (np.int64, np.uint64, np.uint16):
    np.testing.assert_array_equal(target.make(labels.astype(dtype))[0], expected)
