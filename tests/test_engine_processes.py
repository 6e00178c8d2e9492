"""The engine as users run it: two processes on localhost (kill -9: test_faults_training)."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from neuroseg_jax import config_loading
from neuroseg_jax.training import checkpointing
from neuroseg_jax.training import loop
from neuroseg_jax.training import mesh as mesh_lib
from neuroseg_jax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "toy_config.py")
CPU = jax.devices("cpu")

def _main_command(arg: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "neuroseg_jax.main", f"--config={TOY_CONFIG}:{arg}",
          f"--workdir={workdir}"]

def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", NEUROSEG_JAX_CACHE_DIR="off", **extra)
  return env

def _restore_params(workdir: str, like: dict) -> dict:
  mesh = mesh_lib.make_data_mesh(CPU[:1])
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  state = ckpt.restore(checkpointing.abstract_with_shardings(
      shapes, mesh_lib.state_shardings(shapes, mesh)))
  ckpt.close()
  return jax.device_get(state["params"])

def _complete_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]

def test_two_processes_train_in_lockstep_like_one(tmp_path):
  arg = "num_steps=4,checkpoint_every=2"
  single = loop.train(tasks.build(config_loading.load_config(f"{TOY_CONFIG}:{arg}")),
                                   str(tmp_path / "single"), devices=CPU[:1])
  workdir = str(tmp_path / "two")
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _main_command(arg, workdir),
      env=_env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outputs[1]
  losses = lambda d: [r["train/loss"] for r in loop.read_metrics(d) if "train/loss" in r]
  np.testing.assert_allclose(losses(workdir), losses(str(tmp_path / "single")), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(_restore_params(workdir, single)),
                  jax.tree.leaves(jax.device_get(single["params"]))):
    np.testing.assert_allclose(a, b, atol=1e-5)
