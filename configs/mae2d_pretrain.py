"""MAE self-pre-training of a 2D ViT on single slices of an EM volume (task "mae_pretrain").

  python -m neuroseg_jax.main --config=configs/mae2d_pretrain.py:smoke --workdir=/tmp/mae2d
  python -m neuroseg_jax.main --config=configs/mae2d_pretrain.py:cpu,tomo --workdir=DIR
  python -m neuroseg_jax.main --config=configs/mae2d_pretrain.py:isbi,mask_ratio=0.5 --workdir=DIR

The same arguments and variants as configs/mae3d_pretrain.py, with 2-D sizes
("HxW"). Defaults follow the 2D MAE (He et al. 2022): 224x224 crops, patch 16x16
(196 tokens), ViT-base, decoder 512 wide, 8 deep, 16 heads, masking ratio 0.75,
norm-pix loss; the optimizer and schedule are the 3D reference's.
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("_mae3d_pretrain_config",
                                               Path(__file__).with_name("mae3d_pretrain.py"))
mae3d = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mae3d)

ARGS_2D = {**mae3d.ARGS_3D, "isbi": False, "patch_size": "16x16", "crop": "224x224",
           "decoder_width": 512, "mask_ratio": 0.75}
ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
VARIANTS_2D = {
    "tomo": mae3d.VARIANTS_3D["tomo"],
    # The 30 unlabeled ISBI 2012 slices, then the 20 labeled slices' images; the last 5
    # (labeled slices 15-19, the fine-tuning validation slices) are held out, so the
    # encoder never sees them. The ViT of configs/em2d_boundary.py:unetr. Plain-pixel loss:
    # with norm-pix the loss sat at its predict-the-mean baseline (1.0004 after 600 steps).
    "isbi": {**mae3d.VARIANTS_3D["cpu"], "source": "file",
             "path": f"{ISBI / 'unlabeled'}+{ISBI / 'train' / 'image'}", "val_slices": 5,
             "patch_size": "16x16", "crop": "128x128", "num_steps": 1500, "val_crops": 32},
    "cpu": {**mae3d.VARIANTS_3D["cpu"], "patch_size": "8x8", "crop": "64x64"},
    "smoke": {**mae3d.VARIANTS_3D["smoke"], "patch_size": "4x4", "crop": "16x16"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return mae3d.build_config(arg, ARGS_2D, VARIANTS_2D)
