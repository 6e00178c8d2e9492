"""Precise BatchNorm statistics: the equal-weight mean of many batches' statistics."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.training import batch_norm_stats, loop, run_folder
from tests import toy_task

CPU = jax.devices("cpu")


def test_running_averages_become_the_mean_of_batch_statistics():
  norm = nn.BatchNorm(use_running_average=False, momentum=0.9)
  rng = np.random.default_rng(0)
  batches = [rng.normal(loc=k, scale=1 + k, size=(16, 3)).astype(np.float32) for k in range(5)]
  variables = norm.init(jax.random.key(0), batches[0])
  start = {"batch_stats": jax.tree.map(lambda x: x + 7.0, variables["batch_stats"]),
           "untouched": jnp.full([2], 3.0)}

  def stats_fn(model_state, batch):
    _, updates = norm.apply({"params": variables["params"],
                             "batch_stats": model_state["batch_stats"]}, batch,
                            mutable=["batch_stats"])
    return {**model_state, **updates}

  out = batch_norm_stats.precise_statistics(stats_fn, start, batches)
  np.testing.assert_allclose(out["batch_stats"]["mean"],
                             np.mean([b.mean(0) for b in batches], 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["batch_stats"]["var"],
                             np.mean([b.var(0) for b in batches], 0), rtol=1e-5)
  np.testing.assert_array_equal(out["untouched"], start["untouched"])
  assert batch_norm_stats.precise_statistics(stats_fn, start, []) is start


def _train(config, workdir):
  return loop.train(tasks.build(config), str(workdir), devices=CPU[:1])


def test_engine_refreshes_after_the_last_step_and_saves_it(tmp_path):
  plain = _train(toy_task.toy_config(num_steps=4), tmp_path / "plain")
  config = toy_task.toy_config(num_steps=4, batch_norm_stats_batches=3)
  task = tasks.build(config)
  refreshed = loop.train(task, str(tmp_path / "precise"), devices=CPU[:1])
  for a, b in zip(jax.tree.leaves(plain["params"]), jax.tree.leaves(refreshed["params"])):
    np.testing.assert_array_equal(a, b)  # only the statistics change
  dense = jax.device_get(refreshed["params"]["Dense_0"])
  hidden = [np.asarray(b["x"]) @ dense["kernel"] + dense["bias"]
            for b in list(task.train_batches(0, config.batch_size, 0, 1))[:3]]
  stats = jax.device_get(refreshed["model_state"]["batch_stats"]["BatchNorm_0"])
  np.testing.assert_allclose(stats["mean"], np.mean([h.mean(0) for h in hidden], 0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], np.mean([h.var(0) for h in hidden], 0),
                             rtol=1e-4, atol=1e-5)
  resumed = _train(config, tmp_path / "precise")  # the final checkpoint holds them
  np.testing.assert_array_equal(jax.device_get(resumed["model_state"]["batch_stats"]
                                               ["BatchNorm_0"]["mean"]), stats["mean"])


def test_a_record_from_before_a_new_engine_field_still_resumes(tmp_path):
  _train(toy_task.toy_config(num_steps=2), tmp_path)
  record_path = tmp_path / run_folder.RECORD
  record = json.loads(record_path.read_text())
  del record["config"]["batch_norm_stats_batches"]
  record_path.write_text(json.dumps(record))
  assert int(_train(toy_task.toy_config(num_steps=2), tmp_path)["step"]) == 2
  # ... but not when the new field is set otherwise than its default.
  try:
    _train(toy_task.toy_config(num_steps=2, batch_norm_stats_batches=2), tmp_path)
    raise AssertionError("resumed a run of another config")
  except run_folder.RunFolderError as e:
    assert "batch_norm_stats_batches: None -> 2" in str(e)
