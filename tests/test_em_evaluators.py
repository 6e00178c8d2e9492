"""EM evaluators end to end with oracle predict functions (perfect predictions score perfectly)."""

import numpy as np
import pytest

from neuroseg_jax.data import affinities as aff
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_evaluators as ev


def _neurons():
  labels = np.zeros((6, 20, 20), np.uint32)
  labels[:, :9, :10] = 1
  labels[:, :9, 10:] = 2
  labels[:, 10:, :] = 3
  labels[3:, 10:, 12:] = 4
  return labels


def _oracle(target_fn):
  """predict_fn reading the labels stored as intensities: window-local perfect targets."""
  def predict_fn(batch):
    windows = batch["image"][..., 0].astype(np.int64)
    return {"probs": np.stack([target_fn(w) for w in windows])}
  return predict_fn


def test_neuron_evaluator_scores_perfect_affinities_zero(tmp_path):
  labels = _neurons()
  inference = ev.VolumeInference(labels.astype(np.float32), (4, 8, 8), (2, 4, 4),
                                 padding=(1, 2, 2), batch_size=4, flip_axes=(1, 2),
                                 output_key="probs", scratch_dir=str(tmp_path))
  scores = dict(ev.NeuronEvaluator(inference, labels).run(_oracle(aff.affinities_from_labels)))
  assert set(scores) == {"val/arand", "val/voi_split", "val/voi_merge", "val/arand_oracle",
                         "val/waterz_threshold"}
  assert scores["val/arand"] == pytest.approx(0.0, abs=1e-12)
  assert scores["val/arand_oracle"] == pytest.approx(0.0, abs=1e-12)
  assert scores["val/voi_split"] == pytest.approx(0.0, abs=1e-12)
  assert scores["val/voi_merge"] == pytest.approx(0.0, abs=1e-12)
  assert (tmp_path / "affinities.npy").is_file()  # predictions streamed to a memmap


def test_neuron_evaluator_sees_a_merge():
  labels = _neurons()
  merged = np.where(labels == 2, 1, labels)  # the "model" never cuts 1 from 2
  inference = ev.VolumeInference(merged.astype(np.float32), (4, 8, 8), (2, 4, 4),
                                 padding=(1, 2, 2), output_key="probs")
  scores = dict(ev.NeuronEvaluator(inference, labels).run(_oracle(aff.affinities_from_labels)))
  # Halves along y (the longest axis, 20): rows 0-9 hold gt 1 and 2 (540 voxels each, row 9
  # is membrane) in one segment: VOI merge 1 bit; rows 10-19 are right: 0. Mean 0.5.
  assert scores["val/voi_merge"] == pytest.approx(0.5)
  assert scores["val/voi_split"] == pytest.approx(0.0, abs=1e-12)
  assert scores["val/arand"] > 0.1 and scores["val/arand_oracle"] > 0.1


def test_cross_fitting_scores_each_half_at_the_other_halves_threshold():
  def scores(arand_by_threshold):
    return {t: {"arand": a, "voi_split": 10 * a, "voi_merge": t} for t, a in
            arand_by_threshold.items()}
  first = scores({0.1: 0.2, 0.5: 0.4})   # best alone at 0.1
  second = scores({0.1: 0.3, 0.5: 0.1})  # best alone at 0.5
  # first is scored at 0.5 (0.4), second at 0.1 (0.3): never at its own best.
  assert ev.cross_fitted(first, second) == pytest.approx(
      {"arand": 0.35, "voi_split": 3.5, "voi_merge": 0.3})


def test_mitochondria_evaluator_scores_perfect_predictions_one():
  labels = np.zeros((4, 24, 24), np.uint32)
  labels[:, 2:12, 2:12] = 1
  labels[:, 2:12, 12:22] = 2
  labels[1:3, 15:21, 4:10] = 3
  inference = ev.VolumeInference(labels.astype(np.float32), (4, 12, 12), (2, 6, 6),
                                 padding=(0, 3, 3), batch_size=3, output_key="probs")
  evaluator = ev.MitochondriaEvaluator(
      inference, labels, watershed_options={"min_seed_size": 4, "min_size": 10})
  scores = dict(evaluator.run(_oracle(aff.binary_contour_targets)))
  assert scores == pytest.approx(
      {"val/ap75": 1.0, "val/ap50": 1.0, "val/dice": 1.0, "val/iou": 1.0})


def test_labels_must_match_the_volume():
  inference = ev.VolumeInference(np.zeros((4, 8, 8), np.float32), (4, 8, 8), (4, 8, 8))
  with pytest.raises(DataError, match="differs"):
    ev.NeuronEvaluator(inference, np.zeros((4, 8, 9), np.uint32))
  with pytest.raises(DataError, match="integer"):
    ev.MitochondriaEvaluator(inference, np.zeros((4, 8, 8), np.float32))
