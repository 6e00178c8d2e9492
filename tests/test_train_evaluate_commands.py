"""`neuroseg-jax train` and `evaluate`, and the built-in model on real ABO images.

`train` runs on a generated labeled folder (two simulated fields in YOLO layout,
a narrow network, a few steps): it must write a model folder that `segment
--model` and `evaluate --model` accept, and resume instead of retraining. The
built-in model must segment a real ABO field far better than a broken model can.
"""

import csv
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from neuroseg_jax import load_model
from neuroseg_jax import model_folder
from neuroseg_jax import tasks
from neuroseg_jax.commands import evaluate
from neuroseg_jax.commands import segment
from neuroseg_jax.commands import train_model
from neuroseg_jax.data import images
from neuroseg_jax.data import neuron_datasets
from neuroseg_jax.errors import DataError

pytestmark = pytest.mark.runs_long(seconds=210)  # scheduled first (conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yolo_line(mask: np.ndarray) -> str:
  """A polygon around `mask` (its bounding octagon is enough for a label file)."""
  rows, cols = np.nonzero(mask)
  height, width = mask.shape
  y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
  return "0 " + " ".join(f"{x / width:.5f} {y / height:.5f}" for x, y in points)


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("labeled")
  (folder / "images").mkdir()
  (folder / "labels").mkdir()
  samples = neuron_datasets.simulated_samples(num_recordings=2, seed=3, height=96, width=96,
                                               frames=120, channels=("corr",))
  for sample in samples:
    Image.fromarray((255 * sample.image[..., 0]).astype(np.uint8)).save(
        folder / "images" / f"{sample.name}.png")
    (folder / "labels" / f"{sample.name}.txt").write_text(
        "\n".join(_yolo_line(m) for m in sample.masks) + "\n")
  return folder


def test_train_writes_a_model_folder_that_segment_and_evaluate_use(labeled_folder, tmp_path):
  out = tmp_path / "model"
  # One device: the engine's 8-device path is test_engine's; 8 virtual CPU devices would
  # add an SPMD compile of the network for nothing the command does differently.
  one = jax.devices()[:1]
  scores = train_model.train_model(str(labeled_folder), str(out), num_steps=2,
                                   val_fraction=0.5, scale="n", devices=one)
  folder = model_folder.read(str(out))
  assert folder.spec["architecture"]["scale"] == "n"
  assert folder.spec["conf_threshold"] == scores[
      "confidence threshold (chosen on the training images)"]
  assert folder.spec["tta_conf_threshold"] == scores[
      "confidence threshold with --tta (chosen on the training images)"]
  assert "validation F1" in scores and "validation images" in scores
  assert "Training data: 1 labeled images" in (out / "MODEL_CARD.md").read_text()
  # Calling it again resumes the finished run instead of training anew.
  steps_before = len((out / "run" / "metrics.jsonl").read_text().splitlines())
  train_model.train_model(str(labeled_folder), str(out), num_steps=2, val_fraction=0.5,
                          scale="n", devices=one)
  assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == steps_before

  image = next((labeled_folder / "images").iterdir())
  (result,) = segment.segment([str(image)], str(tmp_path / "seg"), model_name=str(out),
                              progress=False, tta=True)
  assert os.path.isfile(result.files[0])
  table = evaluate.evaluate(str(out), str(labeled_folder), str(tmp_path / "eval"))
  assert [s.name for s in table][-1] == "pooled" and len(table) == 3
  with open(tmp_path / "eval" / "evaluation.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(evaluate.COLUMNS) and rows[-1]["image"] == "pooled"

  # Recalibrating at another NMS rewrites thresholds and settings, not the weights.
  weights = (out / model_folder.WEIGHTS).read_bytes()
  new = train_model.recalibrate(str(out), str(labeled_folder), 0.5, "recalibrate-test")
  spec = model_folder.read(str(out)).spec
  assert spec["postprocess"]["nms_iou"] == 0.5
  assert (out / model_folder.WEIGHTS).read_bytes() == weights
  assert spec["tta_conf_threshold"] == new[
      "confidence threshold with --tta (chosen on the training images)"]
  assert "recalibrate-test" in (out / "MODEL_CARD.md").read_text()

  # --init MODEL_DIR starts from that model's weights (all of them, not only the backbone).
  config = train_model.recipe_config(str(labeled_folder), 1, 0.5, str(out), scale="n")
  task = tasks.build(config)
  shapes = jax.eval_shape(task.init_variables, jax.random.key(1),
                          {"image": np.zeros((1, 64, 64, 3), np.float32)})
  # All NaN: an array that load_pretrained leaves uncopied fails the comparison below.
  unset = jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), shapes)
  params, model_state = task.load_pretrained(unset["params"],
                                             {"batch_stats": unset["batch_stats"]})
  for loaded, saved in zip(jax.tree.leaves((params, model_state)),
                           jax.tree.leaves((folder.variables["params"],
                                            {"batch_stats": folder.variables["batch_stats"]}))):
    np.testing.assert_array_equal(loaded, saved)


def test_zoom_2_trains_the_zoomed_recipe_and_its_folder_segments_at_that_zoom(labeled_folder):
  config = train_model.recipe_config(str(labeled_folder), None, 0.0, "scratch", zoom=2)
  assert (config.num_steps, config.data.image_size, config.eval.image_size,
          config.eval.zoom) == (600, 256, 1024, 2.0)
  spec = train_model._spec(config, 0.3, 0.3)  # pylint: disable=protected-access
  assert spec["input"]["zoom"] == 2.0 and spec["input"]["tile_size"] == 1024
  plain = train_model.recipe_config(str(labeled_folder), None, 0.0, "scratch")
  assert (plain.num_steps, plain.eval.zoom) == (400, 1.0)
  with pytest.raises(DataError, match="--zoom"):
    train_model.recipe_config(str(labeled_folder), None, 0.0, "scratch", zoom=3)


def test_train_rejects_bad_folders_in_one_line(labeled_folder, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(labeled_folder, broken)
  label = sorted((broken / "labels").iterdir())[0]
  label.write_text("0 0.1 0.2 0.3\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu")
  for data, problem in ((broken, label.name), (tmp_path / "nothing", "no images/ folder")):
    result = subprocess.run([sys.executable, "-m", "neuroseg_jax.cli", "train", "--data",
                             str(data), "--out", str(tmp_path / "m"), "--steps", "1"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and problem in last, last
  assert not (tmp_path / "m" / "model.json").exists()


def test_val_fraction_must_leave_training_images(labeled_folder, tmp_path):
  with pytest.raises(DataError, match="leaves no training image"):
    train_model.train_model(str(labeled_folder), str(tmp_path / "m"), val_fraction=1.0)


def test_builtin_model_segments_a_real_abo_field(shared_data, tmp_path):
  folder = shared_data / "abo275"
  name, image_path, label_path = images.list_yolo_folder(folder)[6]
  examples = tmp_path / "one"
  (examples / "images").mkdir(parents=True)
  (examples / "labels").mkdir()
  os.symlink(image_path, examples / "images" / image_path.name)
  os.symlink(label_path, examples / "labels" / label_path.name)
  (score, pooled) = evaluate.evaluate("builtin", str(examples), str(tmp_path / "eval"))
  assert score.name == name and pooled.name == "pooled"
  assert score.counts.tp + score.counts.fn > 150, "an ABO field holds 200-350 labeled neurons"
  assert score.counts.f1 > 0.7, score.counts
  assert float(score.matched_iou.mean()) > 0.6
  assert load_model("builtin").conf_threshold == model_folder.read(
      os.path.join(REPO, "neuroseg_jax", "builtin", "neuroseg3_abo")).spec["conf_threshold"]
