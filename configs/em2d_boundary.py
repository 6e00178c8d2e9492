"""Boundary maps of serial-section EM slices (task "em_slice_boundary"): U-Net or UNETR.

  python -m neuroseg_jax.main --config=configs/em2d_boundary.py:smoke --workdir=/tmp/em2d
  python -m neuroseg_jax.main --config=configs/em2d_boundary.py:isbi,unet --workdir=DIR
  python -m neuroseg_jax.main --config=configs/em2d_boundary.py:isbi,unetr,pretrained=/runs/mae --workdir=DIR
  python -m neuroseg_jax.main --config=configs/em2d_boundary.py:images=/data/em/raw.tif,labels=/data/em/labels.tif,train_slices=0-79,val_slices=80-99 --workdir=DIR

Variants (combinable; explicit key=value arguments win): isbi, the ISBI 2012 slices in
../shared/data/isbi2012 (train 0-14, validate 15-19); unet (the default model) or unetr;
smoke, a few steps of tiny models on 2 ISBI slices, tuned over a 16-point watershed
grid. Arguments (`:a,b=c`, named after the field they set; sizes written "HxW"):
  images, key, labels, labels_key, labels_kind (auto | instances | membrane)
  train_slices, val_slices   z-slices like 0-14 or 0-4+10-12 (val "" = no evaluation)
  crop, batch_size, num_steps, lr, seed, warmup_steps
  width, levels              the U-Net
  size, patch_size, decoder_width, pretrained   the UNETR (an MAE run of the same ViT)
  layer_decay                the UNETR's ViT block k from the top learns at lr * layer_decay**k
                             (1 = off; for pre-trained encoders, as MAE fine-tuning does)
  elastic_alpha              px RMS of the elastic deformation (0 = off)
  flip_tta                   switch: 4-flip test-time augmentation in evaluation
  merge                      switch: the watershed's fragments are also agglomerated, the
                             merge threshold tuned with the other parameters
  tune_slices                labeled z-slices the post-processing is tuned on ("" = the
                             training slices; slices the network did not train on give
                             parameters that carry over to new data)
  match_noise                slices noisier than the training ones are blurred to their
                             noise level before prediction (`data/noise_matching.py`;
                             default True, match_noise=False to switch off)
The UNETR's ViT and crop must be those of configs/mae2d_pretrain.py:isbi (mini, patch
16x16, 128x128 crops) for its weights to load.
"""

from pathlib import Path

import ml_collections

from neuroseg_jax.config_args import parse_arg
from neuroseg_jax.training import defaults

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012" / "train"
COMMON = dict(
    smoke=False, isbi=False, unet=False, unetr=False,
    images="", key="", labels="", labels_key="", labels_kind="auto",
    train_slices="0-14", val_slices="15-19", crop="128x128", batch_size=8, num_steps=400,
    lr=2e-3, warmup_steps=0.05, seed=0, width=16, levels=4, size="mini", patch_size="16x16",
    decoder_width=16, pretrained="", layer_decay=1.0, elastic_alpha=2.0, flip_tta=False,
    merge=False, tune_slices="", match_noise=True,
)
VARIANTS = {
    "isbi": dict(images=str(ISBI / "image"), labels=str(ISBI / "label")),
    "unet": {},
    "unetr": {},
    "smoke": dict(images=str(ISBI / "image"), labels=str(ISBI / "label"), train_slices="0",
                  val_slices="1", crop="32x32", batch_size=2, num_steps=2, width=4, levels=2,
                  size="mu", patch_size="8x8", decoder_width=4),
}


def sizes(text: str) -> tuple[int, ...]:
  """"128x128" -> (128, 128)."""
  try:
    return tuple(int(v) for v in text.split("x"))
  except ValueError:
    raise ValueError(f"expected sizes written like 128x128, got {text!r}") from None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variants=VARIANTS, **COMMON)
  if args.unet and args.unetr:
    raise ValueError("choose one model: unet or unetr")
  if not args.images or not args.labels:
    raise ValueError("give images=... and labels=... (or the isbi variant)")

  config = defaults.base_config()
  config.task = "em_slice_boundary"
  config.seed = args.seed
  config.batch_size = args.batch_size
  config.num_steps = args.num_steps
  config.log_every = 1 if args.smoke else 0.05
  config.eval_every = 0.0
  config.checkpoint_every = 0 if args.smoke else 0.25
  config.keep_checkpoints = 1
  config.optimizer.lr = args.lr
  config.optimizer.warmup_steps = args.warmup_steps
  config.optimizer.layer_decay = args.layer_decay
  config.model = ml_collections.ConfigDict({
      "name": "unetr" if args.unetr else "unet",
      "width": args.width,
      "levels": args.levels,
      "size": args.size,
      "patch_size": sizes(args.patch_size),
      "use_class_token": True,  # as the MAE encoders (models/mae.py)
      "decoder_width": args.decoder_width,
      "pretrained": args.pretrained,
  })
  config.data = ml_collections.ConfigDict({
      "images": args.images,
      "key": args.key,
      "labels": args.labels,
      "labels_key": args.labels_key,
      "labels_kind": args.labels_kind,
      "train_slices": args.train_slices,
      "val_slices": args.val_slices,
      "crop": sizes(args.crop),
      "augment": {"dihedral": True, "elastic_alpha": args.elastic_alpha, "elastic_sigma": 8.0,
                  "contrast": 0.2, "brightness": 0.1, "gamma": 0.2},
  })
  config.loss = ml_collections.ConfigDict({"bce_weight": 1.0, "dice_weight": 0.5,
                                           "balance": True})
  config.eval = ml_collections.ConfigDict({
      "stride": (),            # () = half the crop
      "padding": (),           # () = a quarter of the crop, reflected
      "batch_size": 8,
      "flip_tta": args.flip_tta,
      # smoke: 16 of the 162 seeded watersheds, so tuning a 512 px slice takes seconds.
      "seed_thresholds": (0.2, 0.4) if args.smoke else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
      "min_seed_sizes": (8, 32) if args.smoke else (8, 32, 128),
      "smoothings": (0.0, 1.0) if args.smoke else (0.0, 1.0, 2.0),
      "seed_erosions": (0.0, 2.0) if args.smoke else (0.0, 2.0, 4.0),
      "seed_quantiles": (),    # e.g. (0.3, 0.5, 0.7): seeds below that share of each slice
      "merge_thresholds": (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8) if args.merge else (0.0,),
      "tune_slices": args.tune_slices,
      "match_noise": args.match_noise,
  })
  return config
