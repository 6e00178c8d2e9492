"""Fault injection for training runs: kill -9, damaged checkpoints, reused run folders.

Each test states the exact outcome: where the run resumes, which message names
the problem, and that the final parameters equal an uninterrupted run.
"""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from neuroseg_jax import tasks
from neuroseg_jax.training import loop
from neuroseg_jax.training import run_folder
from tests import toy_task

pytestmark = pytest.mark.runs_long(seconds=100)  # scheduled first (conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "toy_config.py")
CPU = jax.devices("cpu")


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", NEUROSEG_JAX_CACHE_DIR="off")
  return env


def _train(config, workdir, **kwargs):
  return loop.train(tasks.build(config), str(workdir), devices=CPU[:1], **kwargs)


def _params(state):
  return jax.tree.leaves(jax.device_get(state["params"]))


def _assert_same_params(a, b):
  for x, y in zip(_params(a), _params(b)):
    np.testing.assert_array_equal(x, y)


def _logged_steps(workdir) -> list[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # the line a kill cut short
        continue
      if "train/loss" in record:
        steps.append(record["step"])
  return steps


def _complete_steps(workdir) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def test_kill_9_at_random_steps_loses_at_most_one_interval(tmp_path):
  every, total = 4, 40
  arg = f"num_steps={total},checkpoint_every={every},slow_examples=0.01"
  straight = _train(toy_task.toy_config(num_steps=total, checkpoint_every=every, log_every=1),
                    tmp_path / "straight")
  workdir = str(tmp_path / "killed")
  command = [sys.executable, "-m", "neuroseg_jax.main", f"--config={TOY_CONFIG}:{arg}",
             f"--workdir={workdir}", "--config.log_every=1"]
  kill_after = sorted(np.random.default_rng(7).choice(np.arange(3, total - 4), 3, replace=False))
  for target in kill_after:
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and max(_logged_steps(workdir), default=0) < target:
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = max(_logged_steps(workdir))
    assert reached < total, "the run must be killed before it ends"
    kept = max(_complete_steps(workdir), default=0)
    assert reached - kept <= every, (f"killed after step {reached}, newest checkpoint {kept}: "
                                     f"more than checkpoint_every={every} steps lost")
  finished = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert "resumed from step" in finished.stderr
  steps = _logged_steps(workdir)
  assert steps == list(range(1, total + 1)), "every step logged exactly once"
  resumed = _train(toy_task.toy_config(num_steps=total, checkpoint_every=every, log_every=1,
                                       **{"model.slow_examples": 0.01}), workdir)
  _assert_same_params(straight, resumed)


def _damage(step_dir: str, what: str) -> None:
  """Truncates a checkpoint's array data files, or its metadata file, to half."""
  if what == "data":
    paths = [p for p in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True)
             if os.path.isfile(p)]
  else:
    paths = [os.path.join(step_dir, "default", "_METADATA")]
  assert paths
  for path in paths:
    with open(path, "rb") as f:
      content = f.read()
    with open(path, "wb") as f:
      f.write(content[:len(content) // 2])


@pytest.mark.parametrize("what", ["data", "metadata"])
def test_damaged_newest_checkpoint_falls_back_to_intact_one(tmp_path, caplog, what):
  config = toy_task.toy_config(num_steps=6, checkpoint_every=2)
  straight = _train(config, tmp_path / "straight")
  workdir = tmp_path / "damaged"
  _train(config, workdir)
  _damage(str(workdir / "checkpoints" / "6"), what)
  with caplog.at_level(logging.WARNING):
    resumed = _train(config, workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith("checkpoint step 6 in ") and "is damaged (" in warnings[0]
  assert int(resumed["step"]) == 6
  _assert_same_params(straight, resumed)
  names = sorted(os.listdir(workdir / "checkpoints"))
  assert names[:3] == ["2", "4", "6"] and names[3].startswith("damaged-6-"), names
  records = [r["step"] for r in loop.read_metrics(str(workdir)) if "train/loss" in r]
  assert records == [2, 4, 6]


def test_all_checkpoints_damaged_starts_over(tmp_path, caplog):
  config = toy_task.toy_config(num_steps=4, checkpoint_every=2)
  straight = _train(config, tmp_path / "straight")
  workdir = tmp_path / "damaged"
  _train(config, workdir)
  for step in ("2", "4"):
    _damage(str(workdir / "checkpoints" / step), "metadata")
  with caplog.at_level(logging.WARNING):
    again = _train(config, workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert [w.split(" in ")[0] for w in warnings] == ["checkpoint step 4", "checkpoint step 2"]
  _assert_same_params(straight, again)


def test_non_finite_stop_without_checkpoint_says_so(tmp_path):
  config = toy_task.toy_config(num_steps=6, **{"model.nan_at_step": 0})
  with pytest.raises(loop.NonFiniteError, match="no checkpoint was written before it"):
    _train(config, tmp_path)
  config = toy_task.toy_config(num_steps=6, **{"model.nan_at_step": 3})
  with pytest.raises(loop.NonFiniteError, match="checkpoint of step 2 is intact"):
    _train(config, tmp_path / "later")


def test_reused_run_folder_with_other_config_refuses(tmp_path):
  first = toy_task.toy_config(num_steps=2)
  _train(first, tmp_path)
  other = toy_task.toy_config(num_steps=2, **{"optimizer.lr": 0.1})
  with pytest.raises(run_folder.RunFolderError,
                     match=r"holds a run of a different experiment \(optimizer.lr: 0.05 -> 0.1\)"
                     r".*--overwrite"):
    _train(other, tmp_path)
  # Same config: resumes (nothing to do); longer: extends the run.
  assert int(_train(first, tmp_path)["step"]) == 2
  assert int(_train(toy_task.toy_config(num_steps=4), tmp_path)["step"]) == 4
  # Evaluation settings do not change what was trained: the run is reused.
  evaluated_otherwise = toy_task.toy_config(num_steps=4)
  evaluated_otherwise.eval = {"thresholds": (0.2, 0.4)}
  assert int(_train(evaluated_otherwise, tmp_path)["step"]) == 4
  # ... also when the folder's record predates that rule and still lists eval fields.
  record_path = tmp_path / run_folder.RECORD
  record = json.loads(record_path.read_text())
  record["config"]["eval.thresholds.0"] = 0.3
  record_path.write_text(json.dumps(record))
  assert int(_train(evaluated_otherwise, tmp_path)["step"]) == 4
  replaced = _train(other, tmp_path, overwrite=True)
  fresh = _train(other, tmp_path.parent / "fresh")
  _assert_same_params(replaced, fresh)


def test_reused_run_folder_with_other_data_refuses(tmp_path):
  data = tmp_path / "inputs.txt"
  data.write_text("a")
  config = toy_task.toy_config(num_steps=2)
  config.data_file = str(data)  # any config string naming a file or folder is fingerprinted
  _train(config, tmp_path / "run")
  data.write_text("bb")
  with pytest.raises(run_folder.RunFolderError, match="the input data changed"):
    _train(config, tmp_path / "run")


def test_new_time_stamps_on_the_same_bytes_resume_and_restamp(tmp_path):
  data = tmp_path / "inputs.txt"
  data.write_text("a")
  config = toy_task.toy_config(num_steps=2)
  config.data_file = str(data)
  _train(config, tmp_path / "run")
  record_path = tmp_path / "run" / run_folder.RECORD
  os.utime(data, ns=(10**18, 10**18))  # copied without its time stamp
  assert json.loads(record_path.read_text())["data"] != run_folder.fingerprint(config)["data"]
  assert int(_train(toy_task.toy_config(num_steps=3, data_file=str(data)),
                    tmp_path / "run")["step"]) == 3
  assert json.loads(record_path.read_text())["data"] == run_folder.fingerprint(config)["data"]
  data.write_text("b")  # same size, other bytes
  with pytest.raises(run_folder.RunFolderError, match="the input data changed"):
    _train(config, tmp_path / "run")


def test_a_run_folder_as_input_counts_by_its_checkpoints(tmp_path):
  pretrained = tmp_path / "pretrained"
  _train(toy_task.toy_config(num_steps=2), pretrained)
  config = toy_task.toy_config(num_steps=2)
  config.data_file = str(pretrained)
  # Nested in the run it starts from, as experiments/masking_ratio.py places fine-tuning.
  workdir = pretrained / "finetune"
  _train(config, workdir)
  _train(toy_task.toy_config(num_steps=2), pretrained)  # reused: rewrites its config.json
  assert int(_train(config, workdir)["step"]) == 2
  _train(toy_task.toy_config(num_steps=4), pretrained)  # trained on: a new checkpoint
  with pytest.raises(run_folder.RunFolderError, match="the input data changed"):
    _train(config, workdir)


def _unwritable_folder(tmp_path) -> str:
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  if not os.access(locked, os.W_OK):
    return str(locked / "run")
  return "/sys/neuroseg_jax_run"  # root ignores permission bits; sysfs refuses new folders


def test_read_only_output_folder_is_one_line(tmp_path):
  workdir = _unwritable_folder(tmp_path)
  result = subprocess.run([sys.executable, "-m", "neuroseg_jax.main",
                           f"--config={TOY_CONFIG}:num_steps=2", f"--workdir={workdir}"],
                          env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {workdir}: cannot write the run folder"), result.stderr
  assert "Traceback" not in result.stderr
