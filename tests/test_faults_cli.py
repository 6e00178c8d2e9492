"""The command line as users meet it: help texts, and bad input as one line with exit code 2.

Every case runs the real console entry (`python -m neuroseg_jax.cli ...`) in a
subprocess and checks the exit code, that stderr ends in exactly one `error:`
line naming the file or field and the problem, and that no traceback is shown.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neuroseg_jax import config_loading
from neuroseg_jax.training import run_folder

pytestmark = pytest.mark.runs_long(seconds=95)  # scheduled first (conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "toy_config.py")


def _cli(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "neuroseg_jax.cli", *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, (fragment, last)
  return last


def test_top_level_help_lists_commands():
  result = _cli("--help")
  assert result.returncode == 0
  for command in ("segment", "train", "evaluate", "demo"):
    assert f"  {command} " in result.stdout
  assert "example:" in result.stdout
  assert _cli().returncode == 2
  _one_line_error(_cli("segmnt"), "unknown command 'segmnt'", "valid choices: segment, train, evaluate, demo")


def test_subcommand_help_shows_defaults_and_an_example():
  demo = _cli("demo", "--help")
  assert demo.returncode == 0
  assert "(default: runs/demo)" in demo.stdout and "example:" in demo.stdout
  assert "--finetune-steps" in demo.stdout and "(default: 150)" in demo.stdout
  train = _cli("train", "--help")
  assert train.returncode == 0
  assert "--data DATA" in train.stdout and "example:" in train.stdout
  words = " ".join(train.stdout.split())  # help lines wrap at the terminal's width
  assert "--overwrite" in words and "400, or 600 at --zoom 2" in words
  assert "(default: None)" not in train.stdout
  research = _cli("train", f"--config={TOY_CONFIG}", "--help")
  assert research.returncode == 0 and "--config=FILE[:ARGS]" in research.stdout
  assert "helpfull" not in research.stdout
  for command in ("segment", "evaluate"):
    text = _cli(command, "--help").stdout
    assert "example:" in text and "(default: builtin)" in text


def test_train_rejects_bad_configs_in_one_line(tmp_path):
  _one_line_error(_cli("train", f"--config={TOY_CONFIG}:num_stepz=3", f"--workdir={tmp_path}"),
                  "unknown config argument 'num_stepz'", "valid choices")
  _one_line_error(_cli("train", f"--config={TOY_CONFIG}", f"--workdir={tmp_path}",
                       "--config.optimizer.lrr=0.1"), "'optimizer.lrr'", "valid choices")
  _one_line_error(_cli("train", f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}"),
                  "nope.py", "not found")
  assert not os.listdir(tmp_path), "nothing written for a rejected command"


def test_train_into_folder_of_another_run_refuses(tmp_path):
  run_folder.claim(str(tmp_path), config_loading.load_config(f"{TOY_CONFIG}:num_steps=2"))
  _one_line_error(_cli("train", f"--config={TOY_CONFIG}:slow_examples=0.001",
                       f"--workdir={tmp_path}"),
                  str(tmp_path), "holds a run of a different experiment", "--overwrite")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_train_nan_stop_is_one_line(tmp_path):
  last = _one_line_error(_cli("train", f"--config={TOY_CONFIG}:num_steps=4",
                              f"--workdir={tmp_path}", "--config.model.nan_at_step=0"),
                         "training stopped at step 1: non-finite loss=nan")
  assert "no checkpoint was written before it" in last


def test_debug_shows_the_traceback(tmp_path):
  result = _cli("train", f"--config={TOY_CONFIG}:num_steps=4", f"--workdir={tmp_path}",
                "--config.model.nan_at_step=0", "--debug")
  assert result.returncode != 0 and "Traceback" in result.stderr


def _labeled_folder(root, broken_line=None):
  (root / "images").mkdir(parents=True)
  (root / "labels").mkdir()
  for name in ("a", "b"):
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(root / "images" / f"{name}.png")
    (root / "labels" / f"{name}.txt").write_text("0 0.1 0.1 0.3 0.1 0.3 0.3\n")
  if broken_line is not None:
    (root / "labels" / "b.txt").write_text(broken_line)
  return root


@pytest.mark.parametrize("case", ["missing", "empty", "broken_polygon", "truncated_image"])
def test_demo_rejects_bad_data_before_training(tmp_path, case):
  data = tmp_path / "data"
  if case == "empty":
    data.mkdir()
    fragments = ("no images/ folder",)
  elif case == "broken_polygon":
    _labeled_folder(data, "0 0.1 0.1 0.3\n")
    fragments = ("b.txt",)
  elif case == "truncated_image":
    _labeled_folder(data)
    path = data / "images" / "a.png"
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])
    fragments = ("a.png",)
  else:
    fragments = (str(data),)
  workdir = tmp_path / "run"
  _one_line_error(_cli("demo", "--data", data, "--workdir", workdir), *fragments)
  assert not workdir.exists(), "no output folder for rejected data"


def test_bad_folders_are_rejected_before_jax_is_imported(tmp_path):
  """A wrong --data path fails in about a second: the check runs before the heavy imports."""
  code = ("import sys\nfrom neuroseg_jax import cli\ntry:\n  cli.main(sys.argv[1:])\n"
          "except SystemExit as e:\n  print(e.code, 'jax' in sys.modules)")
  broken = _labeled_folder(tmp_path / "broken", "0 0.1 0.1 0.3\n")
  for args in (["demo", "--data", tmp_path / "nothing", "--workdir", tmp_path / "run"],
               ["train", "--data", broken, "--out", tmp_path / "model"]):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                            env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.stdout.split() == ["2", "False"], (args[0], result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_demo_into_a_finished_run_of_other_data_refuses(tmp_path):
  workdir = tmp_path / "run"
  run_folder.claim(str(workdir / "tico"), config_loading.load_config(f"{TOY_CONFIG}"))
  data = _labeled_folder(tmp_path / "data")
  _one_line_error(_cli("demo", "--data", data, "--workdir", workdir),
                  str(workdir / "tico"), "holds a run of a different experiment", "--overwrite")
  assert not (workdir / "results.json").exists()
