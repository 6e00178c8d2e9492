"""MAE self-pre-training of a 3D ViT on an unlabeled EM volume (task "mae_pretrain").

  python -m neuroseg_jax.main --config=configs/mae3d_pretrain.py:smoke --workdir=/tmp/mae
  python -m neuroseg_jax.main --config=configs/mae3d_pretrain.py:cpu,tomo,lowpass_sigma=1 \
      --workdir=/tmp/mae_tomo
  python -m neuroseg_jax.main \
      --config=configs/mae3d_pretrain.py:source=file,path=/data/snemi3d/train-input.tif --workdir=DIR
  python -m neuroseg_jax.main --config=configs/mae3d_pretrain.py:mask_ratio=0.75 --workdir=DIR

Variants (combinable): (none) the EM-MAE reference setting below; tomo, the real
cryo-ET volume ../shared/data/volumes/tomo.tif; cpu, a small ViT ("mini", 64 wide,
4 deep) on 4x32x32 crops with 1x8x8 patches, masking 0.75, minutes on a laptop CPU;
smoke, a few steps of a tiny model (seconds).
Arguments (`:a,b=c`, each named after the field it sets; sizes written "DxHxW",
e.g. crop=6x96x96, since commas separate arguments): source (simulator | snemi3d | mitoem | file),
path, key (HDF5 dataset), size (a ViT size: mu, mini, tiny, small, base, large,
huge), patch_size, crop, use_class_token, bin (z-y-x mean-pooling factors of the
volume, e.g. 2x2x2), lowpass_sigma (Gaussian low-pass sigma in voxels after
binning, one number or z-y-x like 0.5x1x1; 0 = off), match_noise_to (z-slices like
30-44 whose noise level noisier slices are blurred down to; "" = off), decoder_width,
decoder_depth, decoder_num_heads, mask_ratio, norm_pix, batch_size, num_steps,
warmup_steps (a fraction of the run or steps), lr, weight_decay, seed, simulator_shape,
simulator_seed, simulator_zoom (data.simulator.*), val_slices, val_axis,
val_crops, eval_every, compute_dtype.

Reference setting (/work/shared/reference/emmae/README.md, the EM-MAE code): crops
6x96x96 (z, y, x), patch 1x16x16 (216 tokens), ViT-base with a class token, decoder
384 wide, 8 deep, 16 heads, norm-pix loss, masking ratio 0.9 (the reference config's
default), AdamW lr 1e-4, weight decay 0, linear warmup 100k steps then cosine to
400k steps, batch 96 (16 per GPU x 6 GPUs). Without tomo / path the data are the
EM simulator's raw volume (`simulator_shape`).
"""

from pathlib import Path

import ml_collections

from neuroseg_jax.config_args import parse_arg
from neuroseg_jax.training import defaults

TOMOGRAM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes" / "tomo.tif"

ARGS_3D = dict(
    smoke=False, cpu=False, tomo=False, source="simulator", path="", key="", size="base",
    bin="1x1x1", lowpass_sigma="0", match_noise_to="", patch_size="1x16x16", crop="6x96x96",
    use_class_token=True, decoder_width=384, decoder_depth=8, decoder_num_heads=16,
    mask_ratio=0.9, norm_pix=True, batch_size=96, num_steps=400_000, warmup_steps=0.25,
    lr=1e-4, weight_decay=0.0, seed=0, simulator_shape="48x256x256", simulator_seed=0,
    simulator_zoom=1.0, val_slices=8, val_axis=0, val_crops=32, eval_every=0.0,
    compute_dtype="float32",
)
VARIANTS_3D = {
    # Validation on the last 32 x-columns: the tomogram's structure lies in its middle z,
    # so a z-end slab would validate on nearly structureless ice. Its raw voxels are mostly
    # noise: add lowpass_sigma=1 to learn its structure (RESULTS.md, "MAE pre-training on
    # EM volumes").
    "tomo": dict(source="file", path=str(TOMOGRAM), val_slices=32, val_axis=2),
    # Minutes on 2 CPU cores. Plain-pixel loss, as every CPU study in RESULTS.md ("MAE
    # pre-training on EM volumes"): in CPU budgets the norm-pix loss stays at its baseline.
    "cpu": dict(size="mini", patch_size="1x8x8", crop="4x32x32", decoder_width=64,
                decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75, batch_size=32,
                num_steps=5000, warmup_steps=0.04, lr=1e-3, weight_decay=0.05,
                simulator_shape="32x128x128", val_crops=64, norm_pix=False),
    "smoke": dict(size="mu", patch_size="1x4x4", crop="2x16x16", decoder_width=16,
                  decoder_depth=1, decoder_num_heads=2, batch_size=4, num_steps=3,
                  warmup_steps=0.0, simulator_shape="8x48x48", val_slices=2, val_crops=4),
}


def sizes(text: str) -> tuple[int, ...]:
  """"6x96x96" -> (6, 96, 96)."""
  try:
    return tuple(int(v) for v in text.split("x"))
  except ValueError:
    raise ValueError(f"expected sizes written like 6x96x96, got {text!r}") from None


def sigmas(text: str) -> tuple[float, float, float]:
  """"1.5" -> (1.5, 1.5, 1.5); "0.5x1x1" -> (0.5, 1.0, 1.0)."""
  try:
    values = tuple(float(v) for v in str(text).split("x"))
  except ValueError:
    values = ()
  if len(values) not in (1, 3):
    raise ValueError(f"expected one sigma or three written like 0.5x1x1, got {text!r}")
  return values * 3 if len(values) == 1 else values


def build_config(arg: str | None, args_defaults: dict, variants: dict) -> ml_collections.ConfigDict:
  """The "mae_pretrain" config for `arg` parsed against the given defaults and variants."""
  args = parse_arg(arg, variants=variants, **args_defaults)
  smoke = args.smoke

  config = defaults.base_config()
  config.task = "mae_pretrain"
  config.seed = args.seed
  config.batch_size = args.batch_size
  config.num_steps = args.num_steps
  config.log_every = 1 if smoke else 0.02
  config.eval_every = args.eval_every
  config.checkpoint_every = 0 if smoke else 0.1
  config.keep_checkpoints = 1 if smoke else 2
  config.compute_dtype = args.compute_dtype
  config.optimizer.name = "adamw"
  config.optimizer.lr = args.lr
  config.optimizer.weight_decay = args.weight_decay
  config.optimizer.b2 = 0.95  # MAE (He et al. 2022)
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = args.warmup_steps
  config.optimizer.grad_clip_norm = 0.0  # MAE uses none

  config.model = ml_collections.ConfigDict({
      "size": args.size,
      "patch_size": sizes(args.patch_size),
      "use_class_token": args.use_class_token,
      "decoder_width": args.decoder_width,
      "decoder_depth": args.decoder_depth,
      "decoder_num_heads": args.decoder_num_heads,
      "mask_ratio": args.mask_ratio,
  })
  config.data = ml_collections.ConfigDict({
      "source": args.source,
      "path": args.path,
      "key": args.key,
      "simulator": {"shape": sizes(args.simulator_shape), "seed": args.simulator_seed,
                    "zoom": args.simulator_zoom},
      "bin": sizes(args.bin),
      "lowpass_sigma": sigmas(args.lowpass_sigma),  # z, y, x; all 0 = no filtering
      # z-slices (e.g. "30-44") whose median noise level every noisier slice is blurred
      # down to (data/noise_matching.py; "" = off); the volume is then read into memory
      "match_noise_to": args.match_noise_to,
      "crop": sizes(args.crop),
      "val_slices": args.val_slices,   # last slices along val_axis held out for validation
      "val_axis": args.val_axis,       # 0 = z, 1 = y, 2 = x
      "val_crops": args.val_crops,
      "augment": {"flips": True, "rot90": True, "contrast": (0.8, 1.2),
                  "brightness": (-0.1, 0.1), "gamma": (0.8, 1.25)},
  })
  config.loss = ml_collections.ConfigDict({"norm_pix": args.norm_pix})
  config.eval = ml_collections.ConfigDict({
      "batch_size": min(args.val_crops, 4 if smoke else 16),
      "figure_crops": 2 if smoke else 4,
  })
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return build_config(arg, ARGS_3D, VARIANTS_3D)
