"""Entry point: `python -m neuroseg_jax.main --config=configs/X.py:ARGS --workdir=DIR`.

Any config field can be overridden: `--config.optimizer.lr=1e-3`. A second call
with the same workdir resumes from the latest checkpoint there.
"""

from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from neuroseg_jax import config_loading
from neuroseg_jax import registry
from neuroseg_jax.training import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  mesh_lib.maybe_initialize_distributed()
  from neuroseg_jax.training import loop  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter.
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except registry.UnknownNameError as e:
    sys.exit(f"error: {e}")


def run() -> None:
  try:
    config_loading.check_overrides(sys.argv[1:])
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
