"""Model folders: round trip, checksum, loud failures; a model from one predicts any size."""

import json
import os

import jax
import numpy as np
import pytest

from tests import random_variables
from neuroseg_jax import model_folder
from neuroseg_jax import predictor
from neuroseg_jax.data import summary_images
from neuroseg_jax.data import twophoton_sim
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import flip_tta
from neuroseg_jax.models import yolo_decode
from neuroseg_jax.models import yolo_seg

ARCHITECTURE = {"scale": "n", "block": "c2f_faster_ema", "neck": "bifpn", "num_classes": 1,
                "drop_path_rate": 0.0}
SPEC = {"architecture": ARCHITECTURE,
        "input": {"channels": ["image"] * 3, "normalization": "percentile", "tile_size": 64,
                  "overlap": 16},
        "conf_threshold": 0.0}

pytestmark = pytest.mark.runs_long(seconds=70)  # scheduled first (conftest.py)


def _variables():
  network = yolo_seg.build_yolo_seg({**ARCHITECTURE, "dtype": "float32"})
  rngs = {"params": jax.random.key(0), "drop_path": jax.random.key(0)}
  return dict(random_variables.fan_in_variables(
      lambda: network.init(rngs, np.zeros((1, 64, 64, 3), np.float32), train=False)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("model"))
  variables = _variables()
  model_folder.write(path, SPEC, variables, "# card\n")
  return path, variables


def test_round_trip_keeps_weights_to_float16_precision(written):
  path, variables = written
  folder = model_folder.read(path)
  assert folder.spec["conf_threshold"] == 0.0 and folder.spec["storage_dtype"] == "float16"
  saved, original = jax.tree.leaves(folder.variables), jax.tree.leaves(variables)
  assert len(saved) == len(original) > 100
  for a, b in zip(saved, original):
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert os.path.isfile(os.path.join(path, "MODEL_CARD.md"))


def test_damaged_weights_fail_the_checksum(written, tmp_path):
  path, _ = written
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in os.listdir(path):
    (copy / name).write_bytes((open(os.path.join(path, name), "rb")).read())
  weights = copy / "weights.npz"
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 0xFF
  weights.write_bytes(bytes(data))
  with pytest.raises(DataError, match=r"weights.npz: checksum mismatch"):
    model_folder.read(str(copy))


def test_not_a_model_folder(tmp_path):
  with pytest.raises(DataError, match="model folder not found"):
    model_folder.read(str(tmp_path / "nope"))
  with pytest.raises(DataError, match="not a model folder"):
    model_folder.read(str(tmp_path))
  (tmp_path / "model.json").write_text(json.dumps({"format": 99}))
  with pytest.raises(DataError, match="model format 99"):
    model_folder.read(str(tmp_path))


def test_predict_on_fields_smaller_and_larger_than_a_tile(written):
  path, _ = written
  model = predictor.load_model(path)
  rng = np.random.default_rng(0)
  small, large = rng.random((40, 50)), rng.random((100, 150))
  found = model.predict([small, large], conf_threshold=0.0)
  assert found[0].masks.shape[1:] == (40, 50) and found[1].masks.shape[1:] == (100, 150)
  for instances in found:
    assert len(instances.scores) == len(instances.masks)
    assert np.all(np.diff(instances.scores) <= 0), "by descending score"
  again = model.predict([large], conf_threshold=0.0)[0]
  np.testing.assert_array_equal(again.scores, found[1].scores)
  with pytest.raises(DataError, match=r"expected a 2-D \[H, W\] image"):
    model.predict([np.zeros((4, 5, 6))])


def test_warm_up_compiles_what_predict_of_that_field_size_runs(written):
  """After warm_up(H, W), segmenting an [H, W] field compiles nothing more (a field
  under 32 px runs as one 32 px input, a shape no other test uses)."""
  path, _ = written
  model = predictor.load_model(path)
  compiles = []

  def listener(event, _, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    model.warm_up(20, 30)
    assert compiles, "the warm-up compiled the network for this size"
    compiles.clear()
    model.predict([np.random.default_rng(0).random((20, 30))], conf_threshold=0.0)
    assert not compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_a_zoomed_model_answers_in_field_pixels(tmp_path):
  """A folder trained at zoom 2 magnifies fields 2x (tiles of tile_size / 2 field
  pixels) and returns masks of the field's own shape."""
  path = str(tmp_path / "zoomed")
  model_folder.write(path, {**SPEC, "input": {**SPEC["input"], "zoom": 2.0}}, _variables(),
                     "# card\n")
  model = predictor.load_model(path)
  assert model.zoom == 2.0
  field = np.random.default_rng(1).random((40, 70))
  found = model.predict([field], conf_threshold=0.0)[0]
  assert found.masks.shape[1:] == (40, 70) and len(found)


def test_flip_tta_makes_a_network_flip_equivariant(written):
  """Averaged over the four flips, the built-in network's scores and boxes for a flipped
  input are those of the input, flipped (a plain pass is not equivariant)."""
  builtin = model_folder.read(predictor.BUILTIN_MODELS["builtin"])
  network = yolo_seg.build_yolo_seg({**builtin.spec["architecture"], "dtype": "float32"})
  apply = jax.jit(lambda variables, image: network.apply(variables, image, train=False))
  plain = lambda batch: jax.device_get(apply(builtin.variables, batch["image"]))
  image = np.random.default_rng(1).random((1, 64, 64, 3)).astype(np.float32)
  for rows, cols in ((False, True), (True, False)):
    flipped = np.flip(image, tuple(a for a, f in ((1, rows), (2, cols)) if f)).copy()
    perm = flip_tta.anchor_permutation((64, 64), rows, cols)
    for predict, equivariant in ((plain, False), (flip_tta.with_flips(plain), True)):
      a, b = (jax.device_get(yolo_decode.decode_predictions(predict({"image": x}), (64, 64)))
              for x in (image, flipped))
      mirrored = np.array(a["boxes_xyxy"])
      if cols:
        mirrored[..., [0, 2]] = 64 - a["boxes_xyxy"][..., [2, 0]]
      if rows:
        mirrored[..., [1, 3]] = 64 - a["boxes_xyxy"][..., [3, 1]]
      same = (np.allclose(b["scores"][:, perm], a["scores"], atol=1e-5) and
              np.allclose(b["boxes_xyxy"][:, perm], mirrored, atol=1e-3))
      assert same == equivariant
  found = predictor.load_model(written[0]).predict([image[0, ..., 0]], conf_threshold=0.0,
                                                   tta=True)[0]
  assert found.masks.shape[1:] == (64, 64) and len(found.scores) == len(found.masks)


def test_update_spec_keeps_the_weights_and_their_checksum(written, tmp_path):
  path, variables = written
  copy = tmp_path / "copy"
  model_folder.write(str(copy), SPEC, variables, "# card\n")
  weights_before = (copy / model_folder.WEIGHTS).read_bytes()
  model_folder.update_spec(str(copy), {"conf_threshold": 0.3, "postprocess": {"nms_iou": 0.5}},
                           "\nrecalibrated\n")
  folder = model_folder.read(str(copy))  # the checksum still verifies
  assert folder.spec["conf_threshold"] == 0.3 and folder.spec["postprocess"] == {"nms_iou": 0.5}
  assert (copy / model_folder.WEIGHTS).read_bytes() == weights_before
  assert (copy / model_folder.CARD).read_text() == "# card\n\nrecalibrated\n"
  assert predictor.load_model(str(copy)).settings.nms_iou == 0.5


def test_predict_drops_low_scores_before_suppression_with_the_same_result():
  """`predict` passes its threshold to `detect`: greedy suppression by score makes that
  exact, on a field of four overlapping tiles (so the cross-tile merge is covered): the
  built-in network on 512 px tiles, so that a 300 px field (600 px at its zoom 2) spans
  four."""
  config = twophoton_sim.SimulationConfig(height=300, width=300, frames=60)
  recording = twophoton_sim.simulate_recording(config, seed=3)
  image = summary_images.compute_summary_images(recording.movie)["corr"]
  builtin = model_folder.read(predictor.BUILTIN_MODELS["builtin"])
  spec = {**builtin.spec, "input": {**builtin.spec["input"], "tile_size": 512}}
  model = predictor.NeuronModel(model_folder.ModelFolder(spec, builtin.variables),
                                "built-in, 512 px tiles")
  everything = model.detect(model.network_input(image))
  above = everything.select(everything.scores >= model.conf_threshold)
  found = model.predict([image])[0]
  assert len(found) > 10 and len(everything) > 2 * len(found)
  np.testing.assert_array_equal(found.scores, above.scores)
  np.testing.assert_array_equal(found.masks, above.masks)
