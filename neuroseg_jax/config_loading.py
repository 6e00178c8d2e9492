"""Loading `configs/x.py:arg` specs and checking `--config.a.b=value` overrides.

The command line goes through `ml_collections.config_flags`; this module checks
overrides up front so a typo fails at start with the valid field names, and lets
scripts (experiments, the demo) load the same configs programmatically.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import ml_collections

from neuroseg_jax.errors import ConfigError


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads "path/to/config.py[:arg]" by calling its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: config file not found")
  module_spec = importlib.util.spec_from_file_location(
      f"_neuroseg_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_field(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raises ValueError naming `dotted` and the valid choices if it is not a field."""
  node, walked = config, []
  for name in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      where = ".".join(walked) or "the config"
      choices = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) \
          else "(none: it is not a group)"
      raise ConfigError(f"unknown config field {dotted!r}: {where} has no field {name!r}; "
                       f"valid choices: {choices}")
    node = node[name]
    walked.append(name)


def check_overrides(argv: Sequence[str], flag_name: str = "config") -> None:
  """Checks every `--config.a.b=v` in argv against the config named by `--config=...`."""
  prefix = f"--{flag_name}="
  specs = [a[len(prefix):] for a in argv if a.startswith(prefix)]
  overrides = [a[len(flag_name) + 3:].split("=", 1)[0] for a in argv
               if a.startswith(f"--{flag_name}.")]
  if not specs:
    return
  config = load_config(specs[-1])  # also fails here, in one line, on a bad config argument
  for dotted in overrides:
    check_field(config, dotted)
