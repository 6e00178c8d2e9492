"""The one exception type for bad input data."""


class DataError(ValueError):
  """Input data is missing or malformed.

  The message always names the offending file (or array) and the problem,
  e.g. "movie.tif: expected a 3-D stack [T, H, W], got shape (5, 5)".
  """

  def __init__(self, source, problem: str):
    self.source = str(source)
    self.problem = problem
    super().__init__(f"{self.source}: {problem}")
