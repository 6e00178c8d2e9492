"""Test-session setup: 8 virtual CPU devices, one compilation cache, shared data locations,
long-running test files first."""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

from neuroseg_jax import runtime

# Must happen before the first JAX computation of the session.
jax.config.update("jax_num_cpu_devices", 8)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
_CACHE_FOLDER = pytest.StashKey[str]()


def pytest_configure(config):
  """One persistent compilation cache for the whole run, fresh each run.

  The controller (or a run without xdist) makes the folder and exports it through
  `runtime.CACHE_ENV` before the xdist workers start, so both workers, and the
  `neuroseg-jax` commands the tests start, share it: a program that several tests
  compile (the same network at the same size) compiles once. Nothing is read from or
  written to the user's own cache.
  """
  if not hasattr(config, "workerinput"):
    folder = tempfile.mkdtemp(prefix="neuroseg_jax_test_xla_")
    os.environ[runtime.CACHE_ENV] = folder
    config.stash[_CACHE_FOLDER] = folder
  runtime.enable_compilation_cache(os.environ[runtime.CACHE_ENV])
  config.addinivalue_line(
      "markers", "runs_long(seconds): a test file that takes minutes (it trains and compiles "
      "whole networks; `seconds`: about how long on 2 cores); scheduled first, longest first")


def pytest_collection_modifyitems(items):
  """Files marked `runs_long` first, longest first, then the rest in collected order.

  The test command runs `-n 2 --dist loadfile --no-loadscope-reorder`, so the two
  workers take files in this order; a long file started last would run alone at the end.
  """
  def first_long(item):
    marker = item.get_closest_marker("runs_long")
    return -marker.kwargs["seconds"] if marker else 0
  items.sort(key=first_long)


def pytest_unconfigure(config):
  folder = config.stash.get(_CACHE_FOLDER, None)
  if folder is not None:
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_data():
  """Path of ../shared/data; skips the test when it is absent (a user's clone)."""
  path = SHARED / "data"
  if not path.is_dir():
    pytest.skip(f"real data folder {path} is absent")
  return path
