"""`neuroseg-jax pretrain-em`: unlabeled EM slices -> an MAE run whose ViT `train-em` starts from.

The folders (or stacks) are stacked along z in the order given and pre-trained with
`configs/mae2d_pretrain.py:isbi` (ViT-mini, patch 16x16, 128x128 crops, masking
0.75, norm-pix loss): exactly the ViT of `train-em --model unetr`, so the run folder
is what `train-em --pretrained` takes. With `--scale smoke` the ViT is the one of
`train-em --model unetr --scale smoke` (ViT-mu, patch 8x8, 32x32 crops). The last
slices are held out for validation, as in the isbi variant (5) but never more than
a fifth of all slices (none for fewer than 5: validation then uses training
slices). Calling the command again resumes the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from neuroseg_jax import config_loading
from neuroseg_jax import tasks
from neuroseg_jax.commands import train_em
from neuroseg_jax.data import em_volumes
from neuroseg_jax.errors import ConfigError, DataError
from neuroseg_jax.training import loop

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mae2d_pretrain.py"
VAL_SLICES = 5  # the isbi variant's
# Config arguments per --scale: the ViT of train-em --model unetr at the same scale.
SCALE_ARGS = {"full": "", "smoke": "smoke,patch_size=8x8,crop=32x32"}


def pretrain_config(folders: list[str], num_steps: int = 1500, mask_ratio: float = 0.75,
                    scale: str = "full") -> ml_collections.ConfigDict:
  """configs/mae2d_pretrain.py:isbi on `folders` stacked along z."""
  if not folders:
    raise ConfigError("give at least one --data folder")
  if scale not in SCALE_ARGS:
    raise ConfigError(f"unknown --scale {scale!r}; valid choices: {', '.join(SCALE_ARGS)}")
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigError(f"--mask-ratio must be between 0 and 1, got {mask_ratio}")
  if num_steps < 1:
    raise ConfigError(f"--steps must be at least 1, got {num_steps}")
  for folder in folders:
    if not os.path.exists(folder):
      raise DataError(folder, "no such file or folder")
    if len(folders) > 1 and "+" in os.path.abspath(folder):
      raise DataError(folder, "a '+' in the path would split the joined path; rename it")
  depth = em_volumes.ConcatenatedVolume([em_volumes.open_volume(f) for f in folders]).shape[0]
  if not CONFIG.is_file():
    raise DataError(CONFIG, "config not found; run from a source checkout installed with "
                    "`pip install -e .`")
  variants = ",".join(v for v in ("isbi", SCALE_ARGS[scale]) if v)
  config = config_loading.load_config(
      f"{CONFIG}:{variants},num_steps={num_steps},mask_ratio={mask_ratio},"
      f"val_slices={min(VAL_SLICES, depth // 5)}")
  config.data.path = "+".join(os.path.abspath(f) for f in folders)
  return config


def pretrain_em(folders: list[str], out: str, num_steps: int = 1500, mask_ratio: float = 0.75,
                overwrite: bool = False, scale: str = "full") -> dict[str, float]:
  """Pre-trains into the run folder `out`; returns its last validation metrics
  (val/reconstruction_loss, val/mean_baseline, val/loss_over_baseline)."""
  config = pretrain_config(folders, num_steps, mask_ratio, scale)
  task = tasks.build(config)
  loop.train(task, out, devices=train_em.training_devices(config.batch_size),
             overwrite=overwrite)
  records = [r for r in loop.read_metrics(out) if "val/reconstruction_loss" in r]
  return {k: v for k, v in records[-1].items() if k.startswith("val/")} if records else {}
