"""The `neuroseg-jax` console script: user commands, each with `--help`.

  neuroseg-jax segment INPUT... --out DIR [--model builtin|MODEL_DIR] [--nwb]
  neuroseg-jax train --data FOLDER --out MODEL_DIR [--init ...] [--steps N] [--val F]
  neuroseg-jax evaluate --model M --data FOLDER --out DIR
  neuroseg-jax demo [--workdir DIR] [--data FOLDER]   the NeuroSeg-III method end to end
  neuroseg-jax train-em --data FOLDER --out MODEL_DIR [--model unet|unetr] [--pretrained RUN]
  neuroseg-jax segment-em INPUT --model MODEL_DIR --out DIR [--slab 8] [--labels LABELS]
  neuroseg-jax pretrain-em --data FOLDER [FOLDER ...] --out RUN_DIR [--steps N]
  neuroseg-jax train --config=configs/X.py:ARGS --workdir=DIR   research runs

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
  """Help text with every option's default (none shown where it is None: the option's
  help says what happens then) and the example kept as written."""

  def _get_help_string(self, action):
    return action.help if action.default is None else super()._get_help_string(action)


def _parser(command: str, description: str, example: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"neuroseg-jax {command}", description=description,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=_DefaultsAndExamples)
  parser.add_argument("--debug", action="store_true",
                      help="show the full traceback of an error instead of one line")
  return parser


def _demo(argv: list[str]) -> None:
  from neuroseg_jax import demo_settings  # pylint: disable=g-import-not-at-top
  defaults = demo_settings.DemoSettings()
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
  settings = demo_settings.DemoSettings(**{f.name: getattr(args, f.name)
                                           for f in dataclasses.fields(defaults)})

  def job():
    from neuroseg_jax import demo  # pylint: disable=g-import-not-at-top
    demo.run_demo(args.workdir, args.data, settings, args.overwrite)

  check = None if args.data is None else lambda: demo_settings.check_labeled_folder(args.data)
  _run(args.debug, job, trains=True, check=check)


def _segment(argv: list[str]) -> None:
  parser = _parser(
      "segment", "Neurons of two-photon recordings or summary images: instance masks, ROI "
      "table, overlay and summary images; for movies also fluorescence traces (raw, "
      "neuropil, corrected F, dF/F) and optionally NWB.",
      "neuroseg-jax segment ../shared/data/sima_movie/example.tif --out results/")
  parser.add_argument("inputs", nargs="*", metavar="INPUT", help=(
      "movies (multipage TIFF, HDF5, folder of frame TIFFs) or summary images "
      "(jpg/png/single-page tif); none: a simulated recording, scored against its truth"))
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--model", default="builtin", help="'builtin' or a model folder "
                      "written by `neuroseg-jax train`")
  parser.add_argument("--projection", default="corr", help="summary image of a movie that the "
                      "model segments (corr, mean, max, std, robust_max); the correlation "
                      "image shows active cells, which is what the built-in model was "
                      "trained to find")
  parser.add_argument("--no-motion", action="store_true",
                      help="skip rigid motion correction of movies")
  parser.add_argument("--nwb", action="store_true", help="also write NAME.nwb (movies)")
  parser.add_argument("--frame-rate", type=float, default=30.0, help="frames per second")
  parser.add_argument("--dataset", default=None, help="HDF5 dataset of the movie (default mov)")
  parser.add_argument("--tta", action="store_true", help="test-time augmentation: average "
                      "the network over the four flips of each image (4x the network time)")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import segment  # pylint: disable=g-import-not-at-top
    inputs, truth = args.inputs, None
    if not inputs:
      print("no INPUT given: segmenting a simulated recording (256 x 256 px, 600 frames)")
      path, truth = segment.simulated_recording(args.out)
      inputs = [path]
    results = segment.segment(inputs, args.out, args.model, args.projection,
                              not args.no_motion, args.nwb, args.frame_rate, args.dataset,
                              tta=args.tta)
    for result in results:
      print(f"{result.name}: {result.neurons} neurons -> {', '.join(result.files)}")
    if truth is not None:
      counts = segment.score_against(results[0].files[0], truth)
      print(f"against the simulator's {len(truth)} active neurons: precision "
            f"{counts.precision:.3f} recall {counts.recall:.3f} F1 {counts.f1:.3f}")
    print(f"found {sum(r.neurons for r in results)} neurons in {len(results)} input(s); "
          f"files in {args.out}")

  def check():
    from neuroseg_jax.commands import segment_inputs  # pylint: disable=g-import-not-at-top
    segment_inputs.check_inputs(args.inputs, args.dataset)

  _run(args.debug, job, check=check)


def _train(argv: list[str]) -> None:
  if argv and argv[0].startswith("--config"):
    from neuroseg_jax import main as main_lib  # pylint: disable=g-import-not-at-top
    main_lib.run(["neuroseg-jax train", *argv])
    return
  parser = _parser(
      "train", "A folder of labeled summary images (images/NAME.png|jpg|tif + labels/NAME.txt "
      "YOLO polygons) -> a model folder for `segment --model` and `evaluate --model`, with "
      "the real-data recipe (configs/neuroseg3_seg.py:abo). Calling it again resumes. "
      "Research runs: `neuroseg-jax train --config=configs/X.py:ARGS --workdir=DIR`.",
      "neuroseg-jax train --data ../shared/data/abo275 --out models/abo --val 0.2")
  parser.add_argument("--data", required=True, help="labeled folder (YOLO layout)")
  parser.add_argument("--out", required=True, help="model folder to write")
  parser.add_argument("--init", default="scratch", help="scratch, builtin, a model folder or "
                      "a TiCo run folder (its backbone)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (batch 8; default: the recipe's: 400, or 600 at "
                      "--zoom 2)")
  parser.add_argument("--zoom", type=int, default=1, choices=(1, 2),
                      help="train and segment fields magnified this many times (2: the "
                      "abo_zoom2 recipe, held-out ABO F1 0.898 vs 0.874, 4x the network time)")
  parser.add_argument("--val", type=float, default=0.0,
                      help="fraction of the images held out for validation")
  parser.add_argument("--scale", default="s", help="network size: n, s (NeuroSeg-III), m, l")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a training run of other data or settings in --out")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import train_model  # pylint: disable=g-import-not-at-top
    scores = train_model.train_model(args.data, args.out, args.steps, args.val, args.init,
                                     args.overwrite, " ".join(["neuroseg-jax train", *argv]),
                                     args.scale, args.zoom)
    for name, value in scores.items():
      print(f"{name}: {value}")
    print(f"model written to {args.out}")

  def check():
    from neuroseg_jax.data import images  # pylint: disable=g-import-not-at-top
    images.check_yolo_folder(args.data)

  _run(args.debug, job, trains=True, check=check)


def _evaluate(argv: list[str]) -> None:
  parser = _parser(
      "evaluate", "Precision / recall / F1 and mean matched IoU of a model on a labeled "
      "folder, per image and pooled, with overlays and a CSV.",
      "neuroseg-jax evaluate --model builtin --data ../shared/data/abo275 --out eval/")
  parser.add_argument("--model", default="builtin", help="'builtin' or a model folder")
  parser.add_argument("--data", required=True, help="labeled folder (YOLO layout)")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--tta", action="store_true", help="test-time augmentation: average "
                      "the network over the four flips of each image (4x the network time)")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import evaluate  # pylint: disable=g-import-not-at-top
    for score in evaluate.evaluate(args.model, args.data, args.out, args.tta):
      row = score.row()
      print(f"{row['image']:>14}  P {row['precision']:.3f}  R {row['recall']:.3f}  "
            f"F1 {row['f1']:.3f}  mean IoU {row['mean_matched_iou']}")
    print(f"table and overlays in {args.out}")

  _run(args.debug, job)


def _train_em(argv: list[str]) -> None:
  parser = _parser(
      "train-em", "Labeled serial-section EM slices -> an EM boundary model folder for "
      "`segment-em --model`: a 2-D U-Net or UNETR (configs/em2d_boundary.py) predicts "
      "membranes, a per-slice watershed tuned on the tuning slices (default: the training "
      "slices) turns them into cells; the validation slices are scored (adapted Rand error, "
      "VOI). New slices noisier than the training slices are blurred to their noise level "
      "before prediction. Calling it again resumes.",
      "neuroseg-jax train-em --data ../shared/data/isbi2012/train --out models/isbi "
      "--val-slices 15-19 --steps 2000 --merge --tune-folds 3")
  parser.add_argument("--data", default=None, help=(
      "folder holding image/ and label/ (slice folders) or image.tif / image.h5 / image.zarr "
      "and label.* stacks; labels are membrane maps (0 = membrane) or instance ids"))
  parser.add_argument("--images", default=None, help="image volume (instead of --data)")
  parser.add_argument("--labels", default=None, help="label volume (instead of --data)")
  parser.add_argument("--key", default=None, help="HDF5 / zarr dataset of the images")
  parser.add_argument("--labels-key", default=None, help="HDF5 / zarr dataset of the labels")
  parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
  parser.add_argument("--model", default="unet", choices=("unet", "unetr"),
                      help="network: U-Net (from scratch) or UNETR (a ViT, can be pre-trained)")
  parser.add_argument("--pretrained", default=None, metavar="RUN_DIR", help="a `pretrain-em` "
                      "run folder whose ViT "
                      "the UNETR starts from (--model unetr only)")
  parser.add_argument("--steps", type=int, default=400, help="training steps")
  parser.add_argument("--train-slices", default="",
                      help="z-slices to train on, like 0-14 or 0-4+10-12 (default: every "
                      "slice not in --val-slices or --tune-slices)")
  parser.add_argument("--tune-slices", default="",
                      help="labeled z-slices left out of training that the post-processing is "
                      "tuned on, like 12-14 (default: the training slices, on which the "
                      "network's maps are cleaner than on new data)")
  parser.add_argument("--tune-folds", type=int, default=0, metavar="K",
                      help="tune the post-processing on out-of-fold maps instead: the training "
                      "slices in K contiguous folds, each predicted by a model trained on the "
                      "others (K more trainings; the maps look as on new slices)")
  parser.add_argument("--merge", action="store_true",
                      help="also agglomerate the watershed's fragments (waterz, median boundary "
                      "along shared edges), the merge threshold tuned with the rest")
  parser.add_argument("--val-slices", default="",
                      help="z-slices held out and scored (adapted Rand error, VOI), like 15-19 "
                      "(default: none)")
  parser.add_argument("--labels-kind", default="auto", choices=("auto", "instances", "membrane"),
                      help="how labels are read: membrane maps (0 = membrane, cells = "
                      "interiors), instance ids, or auto (membrane when they hold 0 and one value)")
  parser.add_argument("--scale", default="full", choices=("full", "smoke"),
                      help="network and crop sizes: the config's, or smoke (tiny, 32x32 crops, "
                      "batch 2: checks data and pipeline in seconds, segments poorly)")
  parser.add_argument("--seed", type=int, default=0,
                      help="random seed of the initialisation, crops and augmentation (the fold "
                      "models of --tune-folds use it too)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a training run of other data or settings in --out")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import train_em  # pylint: disable=g-import-not-at-top
    images, labels = train_em.resolve_inputs(args.data, args.images, args.labels)
    scores = train_em.train_em(
        images, labels, args.out, args.model, args.pretrained or "", args.steps,
        args.train_slices, args.val_slices, args.labels_kind, args.overwrite,
        " ".join(["neuroseg-jax train-em", *argv]), args.scale, args.key or "",
        args.labels_key or "", args.tune_slices, args.merge, args.tune_folds, args.seed)
    for name, value in scores.items():
      print(f"{name}: {value}")
    print(f"model written to {args.out}")

  _run(args.debug, job, trains=True)


def _segment_em(argv: list[str]) -> None:
  parser = _parser(
      "segment-em", "Cells of every slice of a serial-section EM volume with a model of "
      "`train-em`: OUT/labels.tif (uint32, ids unique over the stack), OUT/boundary.tif "
      "(uint8 membrane probability x 255) and OUT/segmentation.json. Streams the volume in "
      "slabs, so memory does not grow with its depth.",
      "neuroseg-jax segment-em ../shared/data/isbi2012/unlabeled --model models/isbi "
      "--out results/isbi")
  parser.add_argument("input", metavar="INPUT", help="image volume: folder of slice files, "
                      "multipage TIFF, HDF5 or zarr (--key)")
  parser.add_argument("--model", required=True, metavar="MODEL_DIR",
                      help="model folder written by `train-em`")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--key", default=None, help="HDF5 / zarr dataset of the images")
  parser.add_argument("--slab", type=int, default=8, help="z-slices predicted at a time")
  parser.add_argument("--labels", default=None, help="ground-truth labels of INPUT to score "
                      "against (membrane maps or instance ids)")
  parser.add_argument("--labels-kind", default="auto", choices=("auto", "instances", "membrane"),
                      help="how --labels are read")
  parser.add_argument("--labels-key", default=None, help="HDF5 / zarr dataset of the labels")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import segment_em  # pylint: disable=g-import-not-at-top
    summary = segment_em.segment_em(args.input, args.model, args.out, args.slab, args.key,
                                    args.labels, args.labels_kind, args.labels_key)
    print(f"{summary['instances']} cells in {len(summary['instances_per_slice'])} slices "
          f"({summary['seconds']:.1f} s) -> {', '.join(summary['files'])} in {args.out}")
    blurred = [s for s in summary["noise_blur_per_slice"] or [] if s > 0]
    if blurred:
      print(f"{len(blurred)} slices noisier than the training slices were blurred to their "
            f"noise level first (sigma {min(blurred):g}-{max(blurred):g} px)")
    if "scores" in summary:
      scores = summary["scores"]
      print(f"against {args.labels}: mean adapted Rand error {scores['arand']:.4f}, VOI split "
            f"{scores['voi_split']:.4f}, VOI merge {scores['voi_merge']:.4f} (per slice in "
            "segmentation.json)")

  _run(args.debug, job)


def _pretrain_em(argv: list[str]) -> None:
  parser = _parser(
      "pretrain-em", "MAE pre-training (configs/mae2d_pretrain.py:isbi) of the ViT of "
      "`train-em --model unetr` on unlabeled EM slices; the run folder is what "
      "`train-em --pretrained` takes. The last slices (5, at most a fifth) are held out for "
      "validation. Calling it again resumes.",
      "neuroseg-jax pretrain-em --data ../shared/data/isbi2012/unlabeled "
      "../shared/data/isbi2012/train/image --out runs/mae_isbi")
  parser.add_argument("--data", nargs="+", required=True, metavar="FOLDER", help=(
      "slice folders or stacks (TIFF, HDF5, zarr), stacked along z in this order"))
  parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
  parser.add_argument("--steps", type=int, default=1500, help="training steps")
  parser.add_argument("--mask-ratio", type=float, default=0.75,
                      help="fraction of the patches masked")
  parser.add_argument("--scale", default="full", choices=("full", "smoke"),
                      help="the ViT of `train-em --model unetr --scale` this value")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a run of other data or settings in --out")
  args = parser.parse_args(argv)

  def job():
    from neuroseg_jax.commands import pretrain_em  # pylint: disable=g-import-not-at-top
    metrics = pretrain_em.pretrain_em(args.data, args.out, args.steps, args.mask_ratio,
                                      args.overwrite, args.scale)
    if metrics:
      print(f"validation reconstruction loss {metrics['val/reconstruction_loss']:.4f} "
            f"(predicting the mean: {metrics['val/mean_baseline']:.4f})")
    print(f"run written to {args.out}; use it with `neuroseg-jax train-em --model unetr "
          f"--pretrained {args.out}`")

  _run(args.debug, job, trains=True)


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "segment": (_segment, "neurons (and traces) of recordings or summary images"),
    "train": (_train, "a labeled folder -> a model folder (or --config=... research runs)"),
    "evaluate": (_evaluate, "score a model on a labeled folder"),
    "demo": (_demo, "the whole NeuroSeg-III method on the simulator or a labeled folder"),
    "train-em": (_train_em, "labeled EM slices -> an EM boundary model folder"),
    "segment-em": (_segment_em, "cells of every slice of an EM volume (streamed in slabs)"),
    "pretrain-em": (_pretrain_em, "MAE pre-training on unlabeled EM slices for train-em"),
}


def _usage() -> str:
  lines = ["usage: neuroseg-jax COMMAND [options]   (neuroseg-jax COMMAND --help for each)",
           "", "commands:"]
  lines += [f"  {name:<11} {summary}" for name, (_, summary) in COMMANDS.items()]
  lines += ["", "example:", "  neuroseg-jax demo --workdir runs/demo"]
  return "\n".join(lines)


def _run(debug: bool, job: Callable[[], object], trains: bool = False,
         check: Callable[[], object] | None = None) -> None:
  """Runs `job`, turning user errors into one line on stderr and exit code 2. `check`
  (reading the inputs) runs first, before JAX is imported, so bad input fails in a
  second. A job that `trains` runs its computations one after another
  (`runtime.keep_freed_memory`)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    if check is not None:
      check()
    from neuroseg_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.keep_freed_memory(calls_in_order=trains)
    runtime.enable_compilation_cache()
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
