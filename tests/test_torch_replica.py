"""The PyTorch replica of the authors' step (experiments/torch_replica) that the speed
benchmark compares with: the authors' network (fixtures) and the project's loss.

Skipped where torch is not installed (it is the optional `reference` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# pylint: disable=wrong-import-position
from experiments.benchmark_train_step import padded_batch
from experiments.torch_replica.network import NeuroSeg3Torch
from experiments.torch_replica.seg_loss import seg_loss
from experiments.torch_replica.step import make_optimizer, tensors, train_step
from neuroseg_jax.losses.yolo_seg_loss import SegLossHyper, yolo_seg_loss

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "neuroseg3"


def test_parameter_count_is_the_authors():
  """README of the reference fixtures: 6,452,943 parameters (DFL weight included)."""
  assert sum(p.numel() for p in NeuroSeg3Torch().parameters()) == 6_452_943


@pytest.mark.parametrize("fixture", ["neuroseg3", "neuroseg3_affine"])
def test_authors_state_dict_loads_strictly_and_reproduces_their_outputs(fixture):
  state_path = REFERENCE / f"{fixture}_state.npz"
  if not state_path.exists():
    pytest.skip(f"reference fixtures not found at {REFERENCE}")
  state = np.load(state_path)
  model = NeuroSeg3Torch()
  model.load_state_dict({k: torch.from_numpy(np.asarray(state[k])) for k in state.files},
                        strict=True)
  io = np.load(REFERENCE / f"{fixture}_io.npz")
  with torch.no_grad():
    pred, protos = model.eval()(torch.from_numpy(io["x"]))
  for ours, theirs in ((pred.numpy(), io["pred"]), (protos.numpy(), io["protos"])):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def _both_losses(batch_size: int):
  """(replica total / B, replica terms, JAX total, JAX metrics) on one prediction."""
  torch.manual_seed(0)
  numpy_batch = padded_batch(batch_size, 128, 6, 8)  # 2 padding slots per image
  batch = tensors(numpy_batch)
  raw, coefs, protos = NeuroSeg3Torch().train()(batch["image"])
  total, terms = seg_loss(raw, coefs, protos, batch["boxes"], batch["classes"],
                          batch["valid"], batch["masks"])
  flat = torch.cat([r.flatten(2) for r in raw], 2).transpose(1, 2).detach().numpy()
  outputs = {"box_logits": flat[..., :64], "cls_logits": flat[..., 64:],
             "mask_coef": coefs.transpose(1, 2).detach().numpy(),
             "protos": protos.permute(0, 2, 3, 1).detach().numpy()}
  jax_total, metrics = yolo_seg_loss(outputs, numpy_batch, SegLossHyper(mask_window=0))
  return float(total.detach()) / batch_size, terms.numpy(), float(jax_total), metrics


@pytest.mark.parametrize("batch_size", [1, 2])
def test_replica_loss_equals_the_project_loss(batch_size):
  total, terms, jax_total, metrics = _both_losses(batch_size)
  np.testing.assert_allclose(terms, [float(metrics[k]) for k in ("box", "mask", "cls", "dfl")],
                             rtol=2e-5)
  np.testing.assert_allclose(total, jax_total, rtol=2e-5)
  assert float(metrics["num_positives"]) > 0


def test_train_step_updates_every_trained_parameter():
  """All but the stride-32 box branch, which neuron-sized boxes give no positives (its
  conv weights still move by weight decay; its norms and bias get no gradient)."""
  torch.manual_seed(0)
  model = NeuroSeg3Torch().train()
  before = {k: v.detach().clone() for k, v in model.named_parameters()}
  loss, update_seconds = train_step(model, make_optimizer(model),
                                    tensors(padded_batch(2, 128, 10, 10)))
  assert np.isfinite(loss) and update_seconds > 0
  unchanged = [k for k, v in model.named_parameters()
               if v.requires_grad and torch.equal(v, before[k])]
  assert unchanged and all(k.startswith("model.28.cv2.2.") for k in unchanged)
  assert torch.equal(model.model[28].dfl.conv.weight, before["model.28.dfl.conv.weight"])
