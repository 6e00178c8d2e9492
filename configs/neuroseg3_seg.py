"""NeuroSeg-III instance segmentation: supervised training or fine-tuning.

  python -m neuroseg_jax.main --config=configs/neuroseg3_seg.py:smoke --workdir=/tmp/seg
  # plain YOLOv8s-seg baseline, one row of the architecture ablation:
  python -m neuroseg_jax.main --config=configs/neuroseg3_seg.py:block=c2f,neck=pan --workdir=...
  # real ABO images, fold 0 of 5 (8 train / 2 test), from scratch:
  python -m neuroseg_jax.main --config=configs/neuroseg3_seg.py:source=abo,fold=0 --workdir=...
  # the real-data recipe on a folder of labeled fields (abo_zoom2: at twice the scale):
  python -m neuroseg_jax.main --config=configs/neuroseg3_seg.py:abo,folder=DIR --workdir=...
  # fine-tune from TiCo weights on 4 labeled images:
  ...:source=abo,num_train=4,pretrained=/path/to/tico_workdir

Arguments (`configs/neuroseg3_seg.py:ARGS`, each named after the field it sets,
prefixed by its group where the name alone is ambiguous): variants smoke, abo,
abo_zoom2; model: scale, block
(c2f | c2f_faster | c2f_faster_ema | c2f_ema), neck (pan | bifpn); data: source
(simulated | abo | yolo_folder | neurofinder), folder, image_size, num_train, num_val,
fold, num_folds, val_images (validation image names joined by "+"; wins over fold);
the simulated source (data.source_args): num_recordings, height, width, frames;
training: num_steps, batch_size, lr, seed, pretrained, freeze_steps, compute_dtype;
eval_image_size (eval.image_size), nms_iou (eval.nms_iou: the box NMS of evaluation
and of the model folder `neuroseg-jax train` writes). The augmentation pipeline is
`--config.data.augment="op|op(...)"` (it contains commas).
"""

import os

import ml_collections

from neuroseg_jax import config_args
from neuroseg_jax.training import defaults

ABO_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "data", "abo275")
AUGMENT = ("flip_lr|flip_ud|rot90|scale_crop(0.8,1.25)|brightness(0.1)|contrast(0.2)"
           "|gamma(0.8,1.25)|noise(0.02)")
ABO_FIELD = 487  # pixels per side of an abo275 image (about 0.8 um per pixel)
ABO_EVAL_SIZE = 512  # the recipe's letterbox size for whole fields (a zoom of 1.05)
PHOTOMETRIC = "flip_lr|flip_ud|rot90|brightness(0.1)|contrast(0.2)|gamma(0.8,1.25)|noise(0.02)"


def native_scale_crops(size: int, field: int = ABO_FIELD, zoom: float = 1.0) -> str:
  """Random windows of ~size / zoom pixels a side (area +-10%) of a field x field
  image, resized to `size`: training at the scale whole fields are evaluated at
  (zoom = eval_image_size / ABO_EVAL_SIZE; 1 for the recipe)."""
  area = (size / (zoom * field)) ** 2
  return f"resized_crop({0.9 * area:.4f},{min(1.1 * area, 1.0):.4f},size={size})|{PHOTOMETRIC}"


# The real-data recipe (RESULTS.md, "ABO"): all labeled images of a folder, 160 px
# native-scale crops, AdamW 2e-3, whole fields evaluated letterboxed to 512 px, box NMS
# at IoU 0.5 (chosen on the training images of every cross-validation fold).
ABO = dict(source="abo", image_size=160, num_val=0, num_steps=400, lr=2e-3,
           eval_image_size=ABO_EVAL_SIZE, nms_iou=0.5)
# The recipe at twice the scale: fields letterboxed to 1024 px, 256 px crops (128
# native pixels), 600 steps. Authors' split F1 0.898 against 0.874 (RESULTS.md).
ABO_ZOOM2 = dict(ABO, abo=True, image_size=256, eval_image_size=2 * ABO_EVAL_SIZE,
                 num_steps=600)
# A few steps of a narrow network on small simulated images: runs on a laptop CPU.
SMOKE = dict(scale="n", image_size=64, height=64, width=64, frames=40, num_recordings=3,
             num_val=1, num_steps=3, batch_size=2)


def _source(args) -> tuple[str, dict]:
  """(registered source name, its arguments) for the `source` argument."""
  if args.source == "simulated":
    return "simulated", {"num_recordings": args.num_recordings, "seed": args.seed,
                         "height": args.height, "width": args.width, "frames": args.frames}
  if args.source in ("abo", "yolo_folder"):
    folder = args.folder or (ABO_FOLDER if args.source == "abo" else "")
    return "yolo_folder", {"folder": os.path.normpath(folder)}
  if args.source == "neurofinder":
    return "neurofinder", {"folders": tuple(args.folder.split(";"))}
  raise ValueError(f"unknown source {args.source!r}; valid choices: abo, neurofinder, "
                   "simulated, yolo_folder")


def get_config(arg=None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(
      arg, variants={"smoke": SMOKE, "abo": ABO, "abo_zoom2": ABO_ZOOM2}, smoke=False,
      abo=False, abo_zoom2=False, scale="s",
      block="c2f_faster_ema",
      neck="bifpn", source="simulated", folder="", image_size=512, num_train=-1, num_val=2,
      fold=-1, num_folds=5, val_images="", num_recordings=12, height=256, width=256, frames=200,
      num_steps=2000, batch_size=8, lr=1e-3, seed=0, pretrained="", freeze_steps=0,
      compute_dtype="float32", eval_image_size=0, nms_iou=0.7)
  if args.source == "simulated":
    args.image_size = min(args.image_size, args.height, args.width)

  # Input pixels per field pixel of the real-data recipe's crops (1 at its 512 px letterbox).
  zoom = (args.eval_image_size or ABO_EVAL_SIZE) / ABO_EVAL_SIZE if args.abo else 1.0

  config = defaults.base_config()
  config.task = "yolo_seg"
  config.seed = args.seed
  config.batch_size = args.batch_size
  config.num_steps = args.num_steps
  config.log_every = 0.1
  config.eval_every = 0 if args.smoke else 0.25
  config.checkpoint_every = 0.25
  config.compute_dtype = args.compute_dtype
  config.optimizer.name = "adamw"
  config.optimizer.lr = args.lr
  config.optimizer.weight_decay = 5e-4
  config.optimizer.warmup_steps = 0.1
  config.optimizer.min_lr_ratio = 0.01
  if args.freeze_steps:
    config.optimizer.freeze = "backbone"
    config.optimizer.freeze_steps = args.freeze_steps

  config.model = ml_collections.ConfigDict({
      "scale": args.scale, "block": args.block, "neck": args.neck, "num_classes": 1,
      "drop_path_rate": 0.1})
  source, source_args = _source(args)
  config.data = ml_collections.ConfigDict({
      "source": source, "source_args": source_args, "image_size": args.image_size,
      "max_instances": 400,
      "augment": native_scale_crops(args.image_size, zoom=zoom) if args.abo else AUGMENT,
      "num_train": args.num_train,
      "num_val": args.num_val, "fold": args.fold, "num_folds": args.num_folds,
      "val_images": args.val_images})
  # assigner_eps: ultralytics uses 1e-9, but for 12-18 px neurons the initial alignment
  # metric (score^0.5 * CIoU^6) is far below it, which scales the box / DFL targets
  # towards 0 and stalls learning (see losses/yolo_seg_loss.py and RESULTS.md, "NeuroSeg-III
  # network"); 1e-30 keeps the normalisation well defined. mask_window: the mask term is
  # evaluated on 16 x 16 prototype-cell crops around each box (64 px at stride 4), the
  # same loss as on the full map (which it falls back to for larger boxes or instances with
  # more than mask_slots positives), 0 = full map.
  config.loss = ml_collections.ConfigDict({"box_gain": 7.5, "cls_gain": 0.5, "dfl_gain": 1.5,
                                           "topk": 10, "alpha": 0.5, "beta": 6.0,
                                           "assigner_eps": 1e-30, "mask_window": 16,
                                           "mask_slots": 24})
  # eval.image_size: letterbox size at evaluation (0: data.image_size); lets a network
  # trained on crops segment whole fields of view. eval.zoom: the scale the crops were
  # trained at, kept in the model folder `neuroseg-jax train` writes, whose predictor
  # magnifies fields of any size by it (in tiles of eval.image_size).
  config.eval = ml_collections.ConfigDict({"batch_size": 2 if args.smoke else 4,
                                           "figures": True,
                                           "image_size": args.eval_image_size,
                                           "nms_iou": args.nms_iou, "zoom": zoom})
  config.pretrained = args.pretrained
  return config
