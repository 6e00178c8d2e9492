"""Chooses a model folder's confidence thresholds again at another box NMS IoU.

The plain and the flip-averaged (--tta) thresholds are chosen on the labeled images
of --data (for the built-in model: its own training images), and the folder's
model.json and MODEL_CARD.md are rewritten; the weights and their checksum are not
touched (`commands/train_model.recalibrate`).

  python -m experiments.recalibrate_model --model neuroseg_jax/builtin/neuroseg3_abo \\
      --data ../shared/data/abo275 --nms_iou 0.5
"""

from __future__ import annotations

import argparse
import sys

from neuroseg_jax.commands import train_model


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="model folder to rewrite")
  parser.add_argument("--data", required=True, help="labeled folder (YOLO layout)")
  parser.add_argument("--nms_iou", type=float, required=True)
  args = parser.parse_args(argv)
  command = " ".join(["python -m experiments.recalibrate_model", *sys.argv[1:]])
  for name, value in train_model.recalibrate(args.model, args.data, args.nms_iou,
                                             command).items():
    print(f"{name}: {value}")


if __name__ == "__main__":
  main()
