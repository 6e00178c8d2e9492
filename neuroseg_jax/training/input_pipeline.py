"""Host-side input pipeline: deterministic per-step batches, prefetched with grain.

Every task describes one training example as a pure function
`make_example(index, rng) -> dict of numpy arrays`; this module turns it into the
host-local batches of consecutive steps. The example at global position `g`
always sees `np.random.default_rng([seed, g])`, and step `s` of a run with global
batch `G` holds positions `s*G ... s*G+G-1` (process `p` of `P` takes its
contiguous slice), so the data depend only on (seed, step): a resumed run, or a
run on another number of devices or hosts, sees exactly the same examples.
"""

from __future__ import annotations

from typing import Callable, Iterator

import grain
import numpy as np

ExampleFn = Callable[[int, np.random.Generator], dict]


def example_rng(seed: int, position: int) -> np.random.Generator:
  """The generator for the example at global position `position`."""
  return np.random.default_rng([seed, position])


def step_batches(make_example: ExampleFn, *, seed: int, local_batch_size: int,
                 process_index: int, process_count: int, start_step: int, num_steps: int,
                 workers: int = 0, prefetch: int = 2) -> Iterator[dict]:
  """Host-local batches for steps `start_step ... num_steps - 1`.

  Returns an iterator of dicts of numpy arrays with a leading axis of
  `local_batch_size`. `workers` threads build examples ahead of time
  (0: built lazily in the calling thread), `prefetch` batches are kept ready.
  """
  global_batch = local_batch_size * process_count

  def build(local_position: int) -> dict:
    step, slot = divmod(local_position, local_batch_size)
    position = step * global_batch + process_index * local_batch_size + slot
    return make_example(position, example_rng(seed, position))

  dataset = (grain.MapDataset.range(start_step * local_batch_size, num_steps * local_batch_size)
             .map(build).batch(local_batch_size, drop_remainder=True))
  if workers <= 0:
    return iter(dataset)
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(prefetch, 1))))
