"""The `neuroseg-jax` console script: user commands, each with `--help`.

  neuroseg-jax demo [--workdir DIR] [--data FOLDER]   the NeuroSeg-III method end to end
  neuroseg-jax train --config=configs/X.py:ARGS --workdir=DIR [--config.a.b=v ...]

Errors in what the user handed us (`neuroseg_jax.errors.UserError`: data,
configs, run folders, a training run that diverged) and unwritable outputs end
the command with one line on stderr and exit code 2; `--debug` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Callable

from neuroseg_jax.errors import UserError

EXIT_BAD_INPUT = 2


class _DefaultsAndExamples(argparse.ArgumentDefaultsHelpFormatter,
                           argparse.RawDescriptionHelpFormatter):
  """Help text with every option's default and the example kept as written."""


def _parser(command: str, description: str, example: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"neuroseg-jax {command}", description=description,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=_DefaultsAndExamples)
  parser.add_argument("--debug", action="store_true",
                      help="show the full traceback of an error instead of one line")
  return parser


def _demo(argv: list[str]) -> None:
  from neuroseg_jax import demo  # pylint: disable=g-import-not-at-top
  defaults = demo.DemoSettings()
  parser = _parser(
      "demo", "TiCo pre-training -> fine-tuning on few labels -> held-out segmentation and "
      "precision/recall/F1, on the built-in simulator or on --data FOLDER.",
      "neuroseg-jax demo --workdir runs/demo_abo --data ../shared/data/abo275")
  parser.add_argument("--workdir", default="runs/demo", help="output folder")
  parser.add_argument("--data", default=None, help=(
      "your own folder in YOLO layout: images/<name>.(jpg|png|tif) summary images and "
      "labels/<name>.txt polygons; all images are used unlabeled for pre-training, the last "
      "is held out for testing (default: the built-in simulator)"))
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a demo of other data or settings in --workdir")
  for field in dataclasses.fields(defaults):
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                        default=field.default, help=field.name.replace("_", " "))
  args = parser.parse_args(argv)
  settings = demo.DemoSettings(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(defaults)})
  _run(args.debug, lambda: demo.run_demo(args.workdir, args.data, settings, args.overwrite))


def _train(argv: list[str]) -> None:
  from neuroseg_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  main_lib.run(["neuroseg-jax train", *argv])


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "demo": (_demo, "the whole NeuroSeg-III method on the simulator or a labeled folder"),
    "train": (_train, "train any config (research runs): --config=configs/X.py:ARGS"),
}


def _usage() -> str:
  lines = ["usage: neuroseg-jax COMMAND [options]   (neuroseg-jax COMMAND --help for each)",
           "", "commands:"]
  lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
  lines += ["", "example:", "  neuroseg-jax demo --workdir runs/demo"]
  return "\n".join(lines)


def _run(debug: bool, job: Callable[[], object]) -> None:
  """Runs `job`, turning user errors into one line on stderr and exit code 2."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from neuroseg_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.enable_compilation_cache()
  try:
    job()
  except (UserError, OSError) as e:
    if debug:
      raise
    fail(e)


def fail(error: BaseException) -> None:
  """Prints `error` as one line (OS errors with their file) and exits with code 2."""
  if isinstance(error, OSError) and error.filename:
    message = f"{error.filename}: {error.strerror or error}"
  else:
    message = " ".join(str(error).split())
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if argv else EXIT_BAD_INPUT)
  if argv[0] not in COMMANDS:
    print(f"error: unknown command {argv[0]!r}; valid choices: {', '.join(COMMANDS)} "
          "(neuroseg-jax --help describes them)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
  main()
