"""What a demo run is given: its budget and, optionally, a labeled folder checked up front.

Kept apart from `demo.py` (which imports JAX and the training stack) so that the
`demo` command builds its options and rejects a bad folder before those imports.
"""

from __future__ import annotations

import dataclasses

from neuroseg_jax.data import images
from neuroseg_jax.errors import DataError


@dataclasses.dataclass
class DemoSettings:
  """Budget of the demo; the defaults finish in minutes on a 2-core laptop CPU."""
  scale: str = "n"
  block: str = "c2f_faster_ema"
  neck: str = "bifpn"
  image_size: int = 128        # simulated field of view / training crop size
  labeled_recordings: int = 4  # the last one is held out for testing
  tico_steps: int = 60
  finetune_steps: int = 150
  batch_size: int = 4
  seed: int = 0


def check_labeled_folder(folder: str) -> None:
  """Reads every image and label of `folder` once, so bad data fails before training."""
  count = images.check_yolo_folder(folder)
  if count < 2:
    raise DataError(folder, f"the demo needs at least 2 labeled images (one is held out), "
                    f"found {count}")
