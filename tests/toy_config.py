"""Config file for the engine's toy task, used by tests that start real processes.

`python -m neuroseg_jax.main --config=tests/toy_config.py:smoke,num_steps=8 --workdir=DIR`,
run from the repository root (which pytest's `pythonpath` and the tests' subprocesses
put on sys.path), so that `tests.toy_task` imports.
"""

from neuroseg_jax import config_args
from tests import toy_task  # registers the task


def get_config(arg=None):
  args = config_args.parse_arg(arg, smoke=False, num_steps=6, checkpoint_every=2,
                               slow_examples=0.0)
  config = toy_task.toy_config(num_steps=args.num_steps, checkpoint_every=args.checkpoint_every)
  config.model.slow_examples = args.slow_examples
  return config
