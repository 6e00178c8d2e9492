"""TiCo pre-training of the NeuroSeg-III encoder (task "tico_pretrain").

  python -m neuroseg_jax.main --config=configs/neuroseg3_tico.py:smoke --workdir=/tmp/tico
  python -m neuroseg_jax.main --config=configs/neuroseg3_tico.py:source=abo_sima --workdir=DIR
  python -m neuroseg_jax.main --config=configs/neuroseg3_tico.py \
      --config.data.source="movie:/my/recordings/*.tif+images:/my/summary_images" --workdir=DIR

Arguments (`:a,b=c`, each named after the field it sets): smoke; source = a name in SOURCES (simulated, abo_sima) or a
raw unlabeled-source spec (see data/unlabeled_images.py); scale, block,
image_size, batch_size, num_steps, lr.

Defaults: the NeuroSeg-III backbone (scale s, c2f_faster_ema), projection head
512 -> 4096 -> 256, 256 px views, batch 32, TiCo beta 0.9 / rho 20, EMA
momentum 0.996 -> 1 (cosine). Optimizer: AdamW, lr 1e-4 (about the usual
self-supervised AdamW scaling, ~5e-4 x batch / 256, for batch 32; 1e-3 made the
online branch drift from the momentum branch faster than it learned in short
runs), 5% linear warmup, cosine decay. Smoke: scale n (head 256 -> 256 -> 64),
64 px, batch 8, 5 steps, 8 simulated 64x64x10 recordings.
The TiCo paper trains on ImageNet with large-batch LARS (the Barlow Twins /
VICReg recipe it builds on); LARS is not in our optimizer registry and AdamW
is the usual choice for small batches, so AdamW is our default (our choice,
not the paper's).

Input channels: every unlabeled image is one channel (a windowed max
projection or a grayscale summary image), percentile-normalised and replicated
into `data.channels` (3, the segmentation network's input channels).
"""

from pathlib import Path

import ml_collections

from neuroseg_jax.config_args import parse_arg
from neuroseg_jax.training import defaults

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = {
    "simulated": "simulator",
    # The 10 real ABO summary images (labels ignored) + windowed max projections
    # of the SIMA example movie (20 frames -> 2 images).
    "abo_sima": (f"images:{SHARED_DATA / 'abo275'}"
                 f"+movie:{SHARED_DATA / 'sima_movie' / 'example.tif'}"),
}
SMOKE = dict(scale="n", image_size=64, batch_size=8, num_steps=5)
AUGMENT = ("resized_crop(0.3, 1.0, size={size})|flip_lr|flip_ud|rot90|brightness(0.2)"
           "|contrast(0.2)|gamma(0.7, 1.5)|blur(0.5, 1.5, p=0.5)|noise(0.05)")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variants={"smoke": SMOKE}, smoke=False, source="simulated", scale="s",
                   block="c2f_faster_ema", image_size=256, batch_size=32, num_steps=5000,
                   lr=1e-4)

  config = defaults.base_config()
  config.task = "tico_pretrain"
  config.batch_size = args.batch_size
  config.num_steps = args.num_steps
  config.log_every = 1 if args.smoke else 50
  config.data_workers = 0 if args.smoke else 4  # augmentation is the slow part (RESULTS.md)
  config.checkpoint_every = 0 if args.smoke else 1000
  config.optimizer.name = "adamw"
  config.optimizer.lr = args.lr
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 0 if args.smoke else 0.05

  config.model = ml_collections.ConfigDict({
      "preset": "neuroseg3",
      "scale": args.scale,
      "block": args.block,
      "drop_path_rate": 0.1,
      # Projection head widths; 0 = scaled with the SPPF width C: hidden 8C, out C/2.
      "head_hidden": 256 if args.smoke else 0,
      "head_out": 64 if args.smoke else 0,
  })
  config.data = ml_collections.ConfigDict({
      "source": SOURCES.get(args.source, args.source),
      "window": 10,            # frames per max projection (NeuroSeg-III recipe)
      "seed": 1000,            # simulated unlabeled recordings: seeds seed, seed + 1, ...
      # Smoke: 8 different recordings of one window each (windows of one recording
      # look alike, and TiCo contrasts every pair of different images).
      "simulator": {"num_movies": 8, "height": 64, "width": 64, "frames": 10} if args.smoke
                   else {"num_movies": 8, "height": 256, "width": 256, "frames": 200},
      "image_size": args.image_size,
      "channels": 3,           # replicated: the segmentation network's input channels
      "normalization": "percentile",
      "augment": AUGMENT.format(size=args.image_size),
  })
  config.loss = ml_collections.ConfigDict({
      "beta": 0.9,
      "rho": 20.0,
      "symmetric": True,
      "momentum_base": 0.996,
      "momentum_final": 1.0,
  })
  return config
