"""Entry point: `python -m neuroseg_jax.main --config=configs/X.py:ARGS --workdir=DIR`.

Any config field can be overridden: `--config.optimizer.lr=1e-3`. A second call
with the same workdir resumes from the newest intact checkpoint there; a workdir
that holds a run of another config or other data is refused (`--overwrite`
replaces it). Bad input ends with one line on stderr and exit code 2 (`--debug`
for the traceback).
"""

from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from neuroseg_jax import config_loading
from neuroseg_jax import runtime
from neuroseg_jax.errors import UserError
from neuroseg_jax.training import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace a run of another config or data in --workdir.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an input error.")
flags.mark_flags_as_required(["config", "workdir"])

HELP = """usage: {prog} --config=configs/X.py[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...]
       [--overwrite] [--debug]

Trains the task a config names (TiCo, NeuroSeg-III / YOLOv8-seg, MAE, UNETR) on all
local devices, writing checkpoints/, metrics.jsonl and tensorboard/ to DIR; calling it
again with the same DIR resumes. ARGS are the config's variants and key=value
arguments (see the config file's docstring); every field can be overridden after it.

options:
  --config=FILE[:ARGS]    experiment config (required)
  --workdir=DIR           run folder (required)
  --config.FIELD=VALUE    override one config field, e.g. --config.optimizer.lr=5e-4
  --overwrite             replace a run of another config or data in DIR (default: refuse)
  --debug                 show tracebacks of input errors (default: one line)

example:
  {prog} --config=configs/neuroseg3_seg.py:smoke --workdir=runs/seg_smoke
"""


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.keep_freed_memory(calls_in_order=True)
  mesh_lib.maybe_initialize_distributed()
  runtime.enable_compilation_cache()
  from neuroseg_jax import tasks  # pylint: disable=g-import-not-at-top
  from neuroseg_jax.training import loop  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter.
  try:
    loop.train(tasks.build(_CONFIG.value), _WORKDIR.value, overwrite=_OVERWRITE.value)
  except (UserError, OSError) as e:
    if _DEBUG.value:
      raise
    from neuroseg_jax import cli  # pylint: disable=g-import-not-at-top
    cli.fail(e)


def run(argv: list[str] | None = None) -> None:
  """Checks the command line up front (help, config file, override names), then trains."""
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "help") for a in argv[1:]):
    print(HELP.format(prog=argv[0]))
    sys.exit(0)
  try:
    config_loading.check_overrides(argv[1:])
  except (UserError, ValueError, FileNotFoundError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)


if __name__ == "__main__":
  sys.exit(run())
