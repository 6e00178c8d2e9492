"""The masking-ratio study's fine-tuning specs (`experiments/masking_ratio.py`)."""

from experiments import masking_ratio
from neuroseg_jax import config_loading


def test_layer_decay_reaches_the_fine_tuning_from_each_mae():
  spec = masking_ratio.pretrained_spec("configs/em2d_boundary.py:isbi,unetr", "W/ratio_0.5", 0.75)
  assert spec == "configs/em2d_boundary.py:isbi,unetr,pretrained=W/ratio_0.5,layer_decay=0.75"
  config = config_loading.load_config(spec)
  assert config.optimizer.layer_decay == 0.75
  assert config.model.pretrained == "W/ratio_0.5"


def test_no_decay_leaves_the_spec_loadable_by_configs_without_the_field():
  spec = masking_ratio.pretrained_spec("configs/unetr3d_finetune.py:smoke", "W/ratio_0.9", 1.0)
  assert spec == "configs/unetr3d_finetune.py:smoke,pretrained=W/ratio_0.9"
  assert config_loading.load_config(spec).model.pretrained == "W/ratio_0.9"
