"""Package-wide error types, importable from every layer.

Entry points (`cli.py`, `main.py`) catch `UserError` and print its message as one
line (exit code 2); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Base of the errors caused by what the user handed us (data, config, run folder)."""


class DataError(UserError, ValueError):
  """Input data is missing or malformed.

  The message always names the offending file (or array) and the problem,
  e.g. "movie.tif: expected a 3-D stack [T, H, W], got shape (5, 5)".
  """

  def __init__(self, source, problem: str):
    self.source = str(source)
    self.problem = problem
    super().__init__(f"{self.source}: {problem}")


class ConfigError(UserError, ValueError):
  """A config file, config argument or override is unknown or malformed."""
