"""NeuroSeg-III evaluator end to end with an oracle head, and the outline figures."""

import numpy as np
import pytest
from matplotlib import image as mpl_image

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.instance_targets import Letterbox
from neuroseg_jax.evaluation import figures
from neuroseg_jax.evaluation import neuron_evaluator as ev
from yolo_head_fixtures import oracle_batch_predict_fn as predict_fn

SIZE = 64
SIDE = 12


def square(x, y, shape=(SIZE, SIZE)):
  mask = np.zeros(shape, bool)
  mask[y:y + SIDE, x:x + SIDE] = True
  return mask


def sample(name, neurons, spurious, missed):
  """neurons / spurious: [(x, y, brightness)] drawn in the image; only neurons and
  missed [(x, y)] (not drawn) are true."""
  image = np.zeros((SIZE, SIZE, 1), np.float32)
  for x, y, value in neurons + spurious:
    image[y:y + SIDE, x:x + SIDE] = value
  truth = np.stack([square(x, y) for x, y, _ in neurons] + [square(x, y) for x, y in missed])
  return ev.EvalSample(name, image, truth)


def make_samples():
  return [
      sample("a", [(4, 4, 0.9), (24, 4, 0.9), (44, 4, 0.9)], [(4, 40, 0.28), (40, 40, 0.33)], []),
      sample("b", [(4, 4, 0.8), (24, 24, 0.8), (44, 44, 0.2)], [], [(4, 44)]),
  ]


def test_metrics_against_hand_computed_values(tmp_path):
  # 7 true neurons; detections: 5 at >= .8, spurious at .33 and .28, a true one at .2.
  # t in (.33, .8]: TP 5 FP 0 FN 2 -> F1 10/12, the best (t <= .2: 12/15; (.28, .33]: 10/13).
  evaluator = ev.NeuronSegEvaluator(make_samples(), batch_size=3, figure_dir=tmp_path)
  metrics = dict(evaluator.run(predict_fn))
  assert metrics["val/best_conf_threshold"] == pytest.approx(0.34)
  assert metrics["val/best_f1"] == pytest.approx(10 / 12)
  assert metrics["val/precision"] == pytest.approx(1.0)
  assert metrics["val/recall"] == pytest.approx(5 / 7)
  assert metrics["val/f1"] == pytest.approx(10 / 12)
  # Ranked: 5 TP (recall 5/7, precision 1), 2 FP, 1 TP (recall 6/7, precision 6/8).
  # Masks match at IoU 140/144 > .95, so every IoU threshold gives the same AP.
  recall_points = np.linspace(0, 1, 101)
  expected_ap = (np.sum(recall_points <= 5 / 7) + 0.75 * np.sum(
      (recall_points > 5 / 7) & (recall_points <= 6 / 7))) / 101
  assert metrics["val/map50"] == pytest.approx(expected_ap)
  assert metrics["val/map50_95"] == pytest.approx(expected_ap)
  for name in ("a", "b"):
    picture = mpl_image.imread(tmp_path / f"{name}.png")
    rgb = picture[..., :3]
    assert np.any(np.all(np.abs(rgb - figures.TRUE_COLOUR) < 0.05, axis=-1))
    assert np.any(np.all(np.abs(rgb - figures.PRED_COLOUR) < 0.05, axis=-1))


def test_fixed_threshold_and_prefix():
  evaluator = ev.NeuronSegEvaluator(make_samples(), batch_size=4, conf_threshold=0.25,
                                    prefix="test")
  metrics = dict(evaluator.run(predict_fn))
  # t = .25: TP 5, FP 2 (.33, .28), FN 2 (the .2 neuron and the missed one).
  assert metrics["test/precision"] == pytest.approx(5 / 7)
  assert metrics["test/recall"] == pytest.approx(5 / 7)
  assert metrics["test/f1"] == pytest.approx(5 / 7)
  assert metrics["test/best_conf_threshold"] == pytest.approx(0.34)


def test_perfect_predictions_score_one():
  samples = [sample("c", [(4, 4, 0.9), (32, 32, 0.9)], [], [])]
  metrics = dict(ev.NeuronSegEvaluator(samples, batch_size=2).run(predict_fn))
  for key in ("precision", "recall", "f1", "map50", "map50_95"):
    assert metrics[f"val/{key}"] == pytest.approx(1.0)


def test_bad_samples_raise_data_error():
  good = make_samples()[0]
  with pytest.raises(DataError, match="bad.*true masks"):
    ev.NeuronSegEvaluator([good, ev.EvalSample("bad", good.image, good.true_masks[0])])
  with pytest.raises(DataError, match="bad.*image must be"):
    ev.NeuronSegEvaluator([good, ev.EvalSample("bad", good.image[:32], good.true_masks)])
  with pytest.raises(DataError, match="bad.*display"):
    ev.NeuronSegEvaluator([ev.EvalSample("bad", good.image, good.true_masks, display=np.zeros(3))])
  with pytest.raises(DataError, match="at least one"):
    ev.NeuronSegEvaluator([])


def test_outline_and_overlay():
  masks = np.stack([square(4, 4), square(30, 30)])  # outlines: 4 * 12 - 4 pixels each
  edges = figures.outline(masks)
  assert edges.sum() == 2 * (4 * SIDE - 4)
  assert edges[4, 4] and not edges[8, 8]
  image = np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)
  rgb = figures.overlay(image, masks[:1], masks[1:])
  np.testing.assert_allclose(rgb[4, 4], figures.TRUE_COLOUR)
  np.testing.assert_allclose(rgb[30, 30], figures.PRED_COLOUR)
  assert rgb[8, 8, 0] == rgb[8, 8, 1] == rgb[8, 8, 2]


def test_letterboxed_samples_are_scored_in_original_pixels(tmp_path):
  # A 48 x 64 original centred in the 64 x 64 input: 8 rows of padding on top.
  corners = [(4, 4), (32, 20)]
  image = np.zeros((SIZE, SIZE, 1), np.float32)
  for x, y in corners:
    image[8 + y:8 + y + SIDE, x:x + SIDE] = 0.9
  truth = np.stack([square(x, y, shape=(48, 64)) for x, y in corners])
  letterbox = Letterbox(scale=1.0, pad_top=8.0, pad_left=0.0)
  samples = [ev.EvalSample("lb", image, truth, letterbox)]
  metrics = dict(ev.NeuronSegEvaluator(samples, figure_dir=tmp_path).run(predict_fn))
  assert metrics["val/f1"] == 1.0 and metrics["val/map50_95"] == pytest.approx(1.0)
  assert mpl_image.imread(tmp_path / "lb.png").ndim == 3
  shifted = [ev.EvalSample("lb", image, truth)]  # letterbox ignored: off by 8 rows
  assert dict(ev.NeuronSegEvaluator(shifted).run(predict_fn))["val/f1"] == 0.0
