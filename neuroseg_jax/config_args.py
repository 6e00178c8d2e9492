"""Parsing of the small argument string handed to `get_config(arg)`.

`configs/x.py:smoke,batch_size=8,block=c2f` reaches `get_config("smoke,batch_size=8,block=c2f")`.
Bare words are variants (flags set to True), `key=value` pairs override defaults.
Values are parsed as Python literals when possible (ints, floats, bools, tuples),
otherwise kept as strings.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "variant,key=value,..." against `defaults`.

  Every name must be a key of `defaults` (variants are boolean defaults), so a
  typo fails at start with the valid choices listed.

  Returns a ConfigDict of the defaults updated by the argument.
  """
  result = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid choices: "
                       f"{', '.join(sorted(defaults))}")
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    else:
      parsed = _parse_value(value.strip())
      default = defaults[key]
      if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = float(parsed)
      if default is not None and type(parsed) is not type(default):
        raise ValueError(f"config argument {key!r} expects {type(default).__name__}, "
                         f"got {value!r}")
      result[key] = parsed
  return ml_collections.ConfigDict(result)
