"""UNETR fine-tuning for 3D segmentation (task "unetr_finetune"), from MAE weights or scratch.

  python -m neuroseg_jax.main --config=configs/unetr3d_finetune.py:smoke --workdir=/tmp/unetr
  python -m neuroseg_jax.main --config=configs/unetr3d_finetune.py:snemi,path=/data/snemi3d,pretrained=/runs/mae --workdir=DIR
  python -m neuroseg_jax.main --config=configs/unetr3d_finetune.py:mitoem,path=/data/MitoEM-R --workdir=DIR
  python -m neuroseg_jax.main --config=configs/unetr3d_finetune.py:nuclei,label_fraction=0.5 --workdir=DIR

Variants (combinable, e.g. nuclei,cpu; explicit key=value arguments win): (none) simulator;
snemi; mitoem; nuclei; cpu; smoke. Arguments (`:a,b=c`, each named after the field it sets,
prefixed by its group where the name alone is ambiguous; sizes are written "DxHxW", e.g.
crop=6x96x96, since commas separate arguments):
  source        simulator | snemi3d | mitoem | file (data.path raw + data.labels_path labels)
  path, labels_path  the files or folders of the source
  target        affinities | binary_contour | binary_contour_distance
  pretrained    MAE pre-training workdir whose params["encoder"] is loaded; "" = scratch
  label_fraction  fraction of the training z-range (its first slices) that is labeled
  size, patch_size, use_class_token  the ViT (must equal the MAE's)
  optimizer_name  adamw | sgd
  warmup_steps, eval_every  a fraction of the run or steps
  crop, decoder_width, split_z, batch_size, num_steps, lr, seed, simulator_shape,
  simulator_seed, simulator_zoom (simulated structures this many times larger),
  eval_stride, eval_padding, eval_min_size
  flip_tta      switch: predict with the 4 in-plane flips (eval.flip_axes = (1, 2))

Variant settings follow /work/shared/reference/emmae/README.md (the EM-MAE code):
  snemi   ViT-base, patch 1x16x16, crops 6x96x96, 3 affinities, label erosion 1, BCE 1 +
          Dice 0.5, SGD lr 0.02 with 5k warmup, 150k steps, batch 4; inference windows
          6x96x96, stride 3x48x48, padding 3x48x48, 4 in-plane flips. Test region: the last
          20 of the 100 training slices (the SNEMI3D test labels are not public).
  mitoem  ViT-base, binary + contour, lr 0.04, 400k steps, batch 3; slices 360-399 of the
          training split are held out (the reference's 2x in-plane downsampling is not done).
  nuclei  ../shared/data/volumes/nuclei.tif + nuclei_label.tif (60 x 256 x 256, 20 nuclei),
          binary + contour, patch 4x16x16 (nearly isotropic voxels), train z < 35, test z >= 35.
  cpu     the encoder of configs/mae3d_pretrain.py:cpu (ViT mini, patch 1x8x8, crops
          4x32x32), decoder width 8, 300 steps: minutes on a laptop CPU.
  smoke   ViT "mu", 4x16x16 crops, 3 steps on a small simulated volume, evaluators run.
The simulator variant uses neuron labels for affinities and mitochondria labels otherwise.
"""

from pathlib import Path

import ml_collections

from neuroseg_jax.config_args import parse_arg
from neuroseg_jax.training import defaults

SHARED_VOLUMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes"
COMMON = dict(
    smoke=False, cpu=False, snemi=False, mitoem=False, nuclei=False,
    source="simulator", path="", labels_path="", target="affinities", pretrained="",
    label_fraction=1.0, size="tiny", patch="1x16x16", use_class_token=True, crop="6x96x96",
    decoder_width=32, split_z=-16, batch_size=4, num_steps=2000, lr=1e-3,
    optimizer_name="adamw", warmup_steps=0.05, seed=0, eval_every=0.0,
    simulator_shape="48x192x192", simulator_seed=0, simulator_zoom=1.0, eval_stride="",
    eval_padding="", flip_tta=False, eval_min_size=0,
)
VARIANTS = {
    "snemi": dict(source="snemi3d", size="base", decoder_width=64, split_z=80,
                  num_steps=150_000, lr=0.02, optimizer_name="sgd", warmup_steps=5000,
                  eval_stride="3x48x48", eval_padding="3x48x48", flip_tta=True),
    "mitoem": dict(source="mitoem", target="binary_contour", size="base", decoder_width=64,
                   split_z=360, batch_size=3, num_steps=400_000, lr=0.04,
                   optimizer_name="sgd", warmup_steps=5000, eval_min_size=128),
    "nuclei": dict(source="file", path=str(SHARED_VOLUMES / "nuclei.tif"),
                   labels_path=str(SHARED_VOLUMES / "nuclei_label.tif"), target="binary_contour",
                   patch_size="4x16x16", crop="16x64x64", decoder_width=16, split_z=35,
                   batch_size=2, num_steps=1000, warmup_steps=0.1, eval_min_size=128),
    # The encoder of configs/mae3d_pretrain.py:cpu (ViT mini, patch 1x8x8, crops 4x32x32).
    "cpu": dict(size="mini", patch_size="1x8x8", crop="4x32x32", decoder_width=8,
                num_steps=300, warmup_steps=0.1, simulator_shape="32x128x128",
                eval_stride="4x32x32"),
    "smoke": dict(size="mu", patch_size="2x4x4", crop="4x16x16", decoder_width=4, split_z=-6,
                  batch_size=2, num_steps=3, warmup_steps=0.0, simulator_shape="16x48x48"),
}


def sizes(text: str) -> tuple[int, ...]:
  """"6x96x96" -> (6, 96, 96); "" -> () (use the default)."""
  try:
    return tuple(int(v) for v in text.split("x")) if text else ()
  except ValueError:
    raise ValueError(f"expected sizes written like 6x96x96, got {text!r}") from None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variants=VARIANTS, **COMMON)
  if args.source != "simulator" and not args.path:
    raise ValueError(f"source {args.source!r} needs path=... (the data folder or raw file)")
  crop = sizes(args.crop)
  eval_stride, eval_padding = sizes(args.eval_stride), sizes(args.eval_padding)

  config = defaults.base_config()
  config.task = "unetr_finetune"
  config.seed = args.seed
  config.batch_size = args.batch_size
  config.num_steps = args.num_steps
  config.log_every = 1 if args.smoke else 0.02
  config.eval_every = args.eval_every
  config.checkpoint_every = 0 if args.smoke else 0.2
  config.keep_checkpoints = 1
  config.optimizer.name = args.optimizer_name
  config.optimizer.lr = args.lr
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = args.warmup_steps

  config.model = ml_collections.ConfigDict({
      "size": args.size,
      "patch_size": sizes(args.patch_size),
      "use_class_token": args.use_class_token,  # MAE encoders have one (models/mae.py)
      "dropout_rate": 0.0,
      "decoder_width": args.decoder_width,
      "skip_blocks": (),                       # () = evenly spaced, e.g. 3/6/9 of 12
      "use_position_embedding": True,
      "pretrained": args.pretrained,
  })
  config.data = ml_collections.ConfigDict({
      "source": args.source,
      "path": args.path,
      "labels_path": args.labels_path,
      "simulator": {"shape": sizes(args.simulator_shape), "seed": args.simulator_seed,
                    "zoom": args.simulator_zoom,
                    "labels": "neurons" if args.target == "affinities" else "mitochondria"},
      "split_z": args.split_z,
      "label_fraction": args.label_fraction,
      "crop": crop,
      "augment": True,
      "intensity_jitter": 0.1,
      "target": args.target,
      "offsets": ((-1, 0, 0), (0, -1, 0), (0, 0, -1)),
      "erosion": 1,
      "contour_width": 1,
  })
  config.loss = ml_collections.ConfigDict({
      "bce_weight": 1.0,
      "dice_weight": 0.5,
      "distance_weight": 1.0,
      "balance": True,
  })
  config.eval = ml_collections.ConfigDict({
      "window": crop,
      "stride": eval_stride,      # () = half the window
      "padding": eval_padding,    # () = none
      "batch_size": 8,
      "flip_axes": (1, 2) if args.flip_tta else (),
      "stream": False,            # True: predictions go to a memmap in WORKDIR/eval_scratch
      "thresholds": (0.1, 0.3, 0.5, 0.7),
      "min_size": args.eval_min_size,  # waterz instances below this size -> background
      "watershed": {"min_seed_size": max(4, args.eval_min_size // 4),
                    "min_size": max(16, args.eval_min_size)},
  })
  return config
