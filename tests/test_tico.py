"""TiCo pre-training: loss vs NumPy, momentum schedule/EMA, gradient flow, training, transfer."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax import config_loading
from neuroseg_jax import tasks
from neuroseg_jax.training import input_pipeline
from neuroseg_jax.losses import tico as tico_loss
from neuroseg_jax.models.tico import build_tico_encoder, head_dims
from neuroseg_jax.models.yolo_seg import build_yolo_seg
from neuroseg_jax.training import loop
from neuroseg_jax.training import transfer


def _numpy_tico(online, target, covariance, beta, rho):
  """Direct float64 TiCo (paper Algorithm 1): returns (loss, new covariance)."""
  z = online / np.linalg.norm(online, axis=1, keepdims=True)
  z_other = target / np.linalg.norm(target, axis=1, keepdims=True)
  n = len(z)
  batch_cov = sum(np.outer(z[i], z[i]) for i in range(n)) / n
  new_cov = beta * covariance + (1 - beta) * batch_cov
  agreement = np.mean([z[i] @ z_other[i] for i in range(n)])
  contrast = np.mean([z[i] @ new_cov @ z[i] for i in range(n)])
  return 1 - agreement + rho * contrast, new_cov


def test_tico_loss_and_covariance_update_match_numpy_over_two_steps():
  rng = np.random.default_rng(0)
  covariance = np.zeros((5, 5))
  for _ in range(2):  # the second step starts from the first step's stored covariance
    online, target = rng.normal(size=(2, 6, 5)) * 3.0
    want_loss, want_cov = _numpy_tico(online, target, covariance, beta=0.8, rho=7.0)
    loss, new_cov, metrics = tico_loss.tico_loss(jnp.asarray(online), jnp.asarray(target),
                                                 jnp.asarray(covariance, jnp.float32),
                                                 beta=0.8, rho=7.0)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new_cov), want_cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["invariance"] + 7.0 * metrics["covariance_contrast"]),
                               want_loss, rtol=1e-5)
    covariance = want_cov
  assert np.abs(covariance).max() > 0.01  # the buffer really accumulated


def test_tico_loss_gradient_follows_the_paper():
  """This batch's covariance is differentiated (pseudo-code detaches C only after backward)."""
  rng = np.random.default_rng(1)
  online, target = rng.normal(size=(2, 4, 3))
  covariance = rng.normal(size=(3, 3)) * 0.1
  covariance = covariance @ covariance.T
  grad = jax.grad(lambda o: tico_loss.tico_loss(o, jnp.asarray(target, jnp.float32),
                                                jnp.asarray(covariance, jnp.float32),
                                                0.9, 20.0)[0])(jnp.asarray(online, jnp.float32))
  eps = 1e-6
  numeric = np.zeros_like(online)
  for index in np.ndindex(online.shape):
    step = np.zeros_like(online)
    step[index] = eps
    plus = _numpy_tico(online + step, target, covariance, 0.9, 20.0)[0]
    minus = _numpy_tico(online - step, target, covariance, 0.9, 20.0)[0]
    numeric[index] = (plus - minus) / (2 * eps)
  np.testing.assert_allclose(np.asarray(grad), numeric, rtol=2e-3, atol=2e-4)


def test_new_covariance_carries_no_gradient():
  online = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)
  grad = jax.grad(lambda o: jnp.sum(tico_loss.tico_loss(o, o, jnp.zeros((3, 3)))[1]))(online)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_cosine_momentum_schedule():
  assert float(tico_loss.cosine_momentum(0, 100)) == pytest.approx(0.996, abs=1e-7)
  assert float(tico_loss.cosine_momentum(50, 100)) == pytest.approx(0.998, abs=1e-7)
  assert float(tico_loss.cosine_momentum(25, 100)) == pytest.approx(
      1 - 0.004 * (1 + np.cos(np.pi / 4)) / 2, abs=1e-7)
  assert float(tico_loss.cosine_momentum(100, 100)) == pytest.approx(1.0, abs=1e-7)


def test_ema_update_every_leaf():
  target = {"a": jnp.full((2,), 1.0), "b": {"c": jnp.full((3, 1), -2.0)}}
  online = {"a": jnp.full((2,), 3.0), "b": {"c": jnp.full((3, 1), 2.0)}}
  out = tico_loss.ema_update(target, online, jnp.float32(0.996))
  np.testing.assert_allclose(np.asarray(out["a"]), 0.996 * 1 + 0.004 * 3, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out["b"]["c"]), 0.996 * -2 + 0.004 * 2, rtol=1e-6)


# ------------------------------------------------------------------ the task

REPO = Path(__file__).resolve().parents[1]
# The smoke config with YOLOv8's plain C2f block: the same code paths, a third of
# the XLA compile time of c2f_faster_ema on CPU.
SMOKE = f"{REPO / 'configs' / 'neuroseg3_tico.py'}:smoke,block=c2f"


def _task(arg=""):
  config = config_loading.load_config(f"{SMOKE},{arg}" if arg else SMOKE)
  return config, tasks.get_task(config.task)(config)


def _batch(task, size):
  examples = [task.make_example(p, input_pipeline.example_rng(0, p)) for p in range(size)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def test_examples_are_two_views_of_one_image_with_replicated_channels():
  config, task = _task()
  example = task.make_example(3, input_pipeline.example_rng(0, 3))
  assert sorted(example) == ["view1", "view2"]
  for view in example.values():
    assert view.shape == (64, 64, 3) and view.dtype == np.float32
    np.testing.assert_array_equal(view[..., 0], view[..., 2])
  assert not np.allclose(example["view1"], example["view2"])
  again = task.make_example(3, input_pipeline.example_rng(0, 3))
  np.testing.assert_array_equal(again["view1"], example["view1"])
  # One epoch of positions visits every image once.
  assert sorted(task.image_index(p) for p in range(len(task.images))) == list(
      range(len(task.images)))
  assert len(task.images) == config.data.simulator.num_movies


def test_after_update_is_ema_with_the_cosine_momentum():
  config, task = _task("num_steps=40")
  online = {"w": np.full((2, 3), 5.0, np.float32)}
  state = {"target": {"params": {"w": np.full((2, 3), 1.0, np.float32)},
                      "batch_stats": {"mean": np.zeros(3, np.float32)}},
           "covariance": np.eye(2, dtype=np.float32)}
  for step, momentum in ((0, 0.996), (20, 0.998), (40, 1.0)):
    out = task.after_update(online, state, jnp.int32(step))
    np.testing.assert_allclose(np.asarray(out["target"]["params"]["w"]),
                               momentum * 1.0 + (1 - momentum) * 5.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["covariance"]), state["covariance"])
    np.testing.assert_array_equal(np.asarray(out["target"]["batch_stats"]["mean"]), 0.0)
  assert config.loss.momentum_base == 0.996


def test_encoder_backbone_is_yolo_seg_backbone_for_the_neuroseg3_block():
  config = {"preset": "neuroseg3", "scale": "n"}
  x = jnp.zeros((1, 64, 64, 3))
  encoder = jax.eval_shape(lambda: build_tico_encoder(config).init(jax.random.key(0), x, False))
  seg = jax.eval_shape(lambda: build_yolo_seg(config).init(jax.random.key(0), x, False))
  for collection in ("params", "batch_stats"):
    mine, theirs = encoder[collection]["backbone"], seg[collection]["backbone"]
    assert jax.tree.structure(mine) == jax.tree.structure(theirs)
    assert [a.shape for a in jax.tree.leaves(mine)] == [b.shape for b in jax.tree.leaves(theirs)]
  assert encoder["params"]["head"]["linear_0"]["kernel"].shape == (256, 2048)  # C = 256 at n
  assert encoder["params"]["head"]["linear_1"]["kernel"].shape == (2048, 128)
  assert head_dims("s") == (4096, 256)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """40 smoke steps on simulated recordings (lr 1e-4), checkpoint at the end."""
  config = config_loading.load_config(f"{SMOKE},num_steps=40")
  workdir = str(tmp_path_factory.mktemp("tico"))
  state = loop.train(tasks.build(config), workdir, devices=jax.devices()[:1])
  return config, workdir, state


def test_loss_decreases_on_simulated_data(trained):
  """The running covariance starts at zero (paper), so the loss first rises while it
  fills (time constant 1 / (1 - beta) = 10 steps); after that training lowers it."""
  _, workdir, _ = trained
  records = [r for r in loop.read_metrics(workdir) if "train/loss" in r]
  losses = [r["train/loss"] for r in records]
  assert len(losses) == 40 and all(np.isfinite(losses))
  assert all(r["train/grad_norm"] > 0 for r in records)  # the online branch learns
  early, late = np.mean(losses[10:20]), np.mean(losses[30:40])
  assert late < early, f"mean loss steps 11-20: {early:.3f}, steps 31-40: {late:.3f}"


def test_checkpoint_backbone_loads_into_yolo_seg(trained):
  config, workdir, _ = trained
  seg = build_yolo_seg(config.model)
  shapes = jax.eval_shape(lambda: seg.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                           train=False))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  destination = {"params": zeros["params"], "model_state": {"batch_stats": zeros["batch_stats"]}}
  checkpoint = transfer.load_checkpoint_state(workdir)
  assert int(checkpoint["step"]) == 40
  subtrees = {
      "params/backbone": lambda t: t["params"]["backbone"],
      "model_state/batch_stats/backbone": lambda t: t["model_state"]["batch_stats"]["backbone"],
  }
  for path, get in subtrees.items():
    source, want = get(checkpoint), get(destination)
    assert jax.tree.structure(source) == jax.tree.structure(want)
    destination, count = transfer.copy_subtree(destination, checkpoint, path, path)
    assert count == len(jax.tree.leaves(want)) > 50
    for loaded, saved in zip(jax.tree.leaves(get(destination)), jax.tree.leaves(source)):
      np.testing.assert_array_equal(loaded, saved)
  assert set(checkpoint["params"]) == {"backbone", "head"}
  assert set(checkpoint["model_state"]) == {"batch_stats", "target", "covariance"}


def test_the_target_branch_gets_no_gradient(trained):
  """d loss / d model_state after training: zero for every target parameter, while
  the covariance buffer (also model state) does get a gradient. (Online gradients:
  grad_norm > 0 in the training test.)"""
  config, _, state = trained
  task = tasks.get_task(config.task)(config)
  params, model_state = jax.device_get((state["params"], state["model_state"]))
  online, target = jax.tree.leaves(params), jax.tree.leaves(model_state["target"]["params"])
  assert len(online) == len(target) and any(not np.allclose(a, b) for a, b in zip(online, target))
  batch = jax.tree.map(jnp.asarray, _batch(task, config.batch_size))
  loss = lambda s: task.loss_fn(params, s, batch, jax.random.key(1), jnp.int32(0))[0]
  grads = jax.jit(jax.grad(loss))(model_state)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["target"]["params"]))
  assert np.abs(np.asarray(grads["covariance"])).max() > 0
  features = jax.jit(task.predict_fn)(params, model_state, {"image": batch["view1"]})
  assert features.shape == (config.batch_size, 256)  # SPPF width at scale n
  assert np.isfinite(features).all() and np.std(np.asarray(features), axis=0).max() > 0
