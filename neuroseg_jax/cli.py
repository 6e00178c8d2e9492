"""The `neuroseg-jax` console script.

  neuroseg-jax demo [--workdir DIR] [--data FOLDER]   the NeuroSeg-III method end to end
  neuroseg-jax train --config=configs/X.py:ARGS --workdir=DIR [--config.a.b=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys


def _demo(argv: list[str]) -> None:
  from neuroseg_jax import demo  # pylint: disable=g-import-not-at-top
  defaults = demo.DemoSettings()
  parser = argparse.ArgumentParser(prog="neuroseg-jax demo", description=(
      "TiCo pre-training -> fine-tuning on few labels -> held-out segmentation and "
      "precision/recall/F1, on the built-in simulator or on --data FOLDER."))
  parser.add_argument("--workdir", default="runs/demo", help="output folder")
  parser.add_argument("--data", default=None, help=(
      "your own folder in YOLO layout: images/<name>.(jpg|png|tif) summary images and "
      "labels/<name>.txt polygons; all images are used unlabeled for pre-training, the last "
      "is held out for testing"))
  for field in dataclasses.fields(defaults):
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                        default=field.default)
  args = parser.parse_args(argv)
  settings = demo.DemoSettings(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(defaults)})
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  demo.run_demo(args.workdir, args.data, settings)


def _train(argv: list[str]) -> None:
  from neuroseg_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  sys.argv = [sys.argv[0]] + argv
  main_lib.run()


COMMANDS = {"demo": _demo, "train": _train}


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.exit(f"usage: neuroseg-jax {{{','.join(COMMANDS)}}} ...\n{__doc__}")
  COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
  main()
