"""Parsing of the small argument string handed to `get_config(arg)`.

`configs/x.py:smoke,batch_size=8,block=c2f` reaches `get_config("smoke,batch_size=8,block=c2f")`.
Bare words are variants (flags set to True), `key=value` pairs override defaults.
Values are parsed as Python literals when possible (ints, floats, bools, tuples),
otherwise kept as strings.

Naming: an argument has the name of the config field it sets (`num_steps` sets
`num_steps`, `decoder_num_heads` sets `model.decoder_num_heads`); where that name
alone would be ambiguous, it is prefixed by its group (`simulator_seed` sets
`data.simulator.seed`, `eval_image_size` sets `eval.image_size`). Only variants and
a few switches that select a setting (`source`, `flip_tta`) have no field of their
name. Values derived from the run length are not computed here: cadences are
fractions of `num_steps` that `training.defaults.resolve_cadence` resolves, so
`:num_steps=N` and `--config.num_steps=N` mean the same.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from neuroseg_jax.errors import ConfigError


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, variants: dict[str, dict] | None = None,
              **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "variant,key=value,..." against `defaults`.

  Every name must be a key of `defaults` (a variant is a boolean default), so a
  typo fails at start with the valid choices listed. `variants` maps a variant
  name to the defaults it changes (e.g. {"smoke": {"steps": 3}}); explicit
  `key=value` pairs win over variants, wherever they stand in the string.

  Returns a ConfigDict of the defaults updated by the argument.
  """
  variants = variants or {}
  result = dict(defaults)
  explicit = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r} in {arg!r}; valid choices: "
                       f"{', '.join(sorted(defaults))}")
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
      result.update(variants.get(key, {}))
    else:
      explicit[key] = _typed(key, value.strip(), defaults[key])
  result.update(explicit)
  return ml_collections.ConfigDict(result)


def _typed(key: str, value: str, default: Any) -> Any:
  parsed = _parse_value(value)
  if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
    parsed = float(parsed)
  if isinstance(default, str) and not isinstance(parsed, str):
    parsed = value  # e.g. a numeric-looking name
  if default is not None and type(parsed) is not type(default):
    raise ConfigError(f"config argument {key!r} expects {type(default).__name__}, got {value!r}")
  return parsed
