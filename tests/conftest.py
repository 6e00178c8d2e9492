"""Test-session setup: 8 virtual CPU devices, shared data locations."""

import pathlib

import jax
import pytest

# Must happen before the first JAX computation of the session.
jax.config.update("jax_num_cpu_devices", 8)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def shared_data():
  """Path of ../shared/data; skips the test when it is absent (a user's clone)."""
  path = SHARED / "data"
  if not path.is_dir():
    pytest.skip(f"real data folder {path} is absent")
  return path
