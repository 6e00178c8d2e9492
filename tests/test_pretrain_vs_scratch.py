"""experiments/pretrain_vs_scratch.py: the configs it builds load, the table it writes."""

import pytest

from experiments import pretrain_vs_scratch as study
from neuroseg_jax import config_loading
from neuroseg_jax.training import defaults


def test_simulator_configs_load_and_match_the_mae_encoder():
  args = study.parse_args(["--mae_steps", "40", "--finetune_steps", "20",
                           "--simulator_zoom", "2"])
  mae = config_loading.load_config(f"{study.MAE_CONFIG}:{study.pretrain_arg(args, 'simulator')}")
  assert mae.num_steps == 40 and defaults.resolve_cadence(mae).optimizer.warmup_steps == 2
  assert mae.data.simulator.seed == 1000 and mae.data.simulator.zoom == 2.0
  for comparison in ("neurons", "mitochondria"):
    arg = study.finetune_arg(args, comparison, seed=3, pretrained="/runs/mae")
    finetune = config_loading.load_config(f"{study.FINETUNE_CONFIG}:{arg}")
    assert finetune.model.pretrained == "/runs/mae" and finetune.seed == 3
    assert finetune.data.simulator.seed == 0 and finetune.data.simulator.zoom == 2.0
    # The fine-tuned encoder is the MAE's: same size, patch and class token.
    assert finetune.model.size == mae.model.size
    assert tuple(finetune.model.patch_size) == tuple(mae.model.patch_size)
    assert finetune.model.use_class_token == mae.model.use_class_token
  scratch = study.finetune_arg(args, "neurons", seed=3, pretrained="")
  assert config_loading.load_config(f"{study.FINETUNE_CONFIG}:{scratch}").model.pretrained == ""


def test_summary_pairs_seeds_and_respects_the_score_direction():
  rows = [{"comparison": "neurons", "seed": s, "init": init, "arand": a, "voi_split": 1.0,
           "voi_merge": 1.0}
          for s, init, a in [(0, "mae", 0.2), (0, "scratch", 0.3), (1, "mae", 0.5),
                             (1, "scratch", 0.4), (2, "mae", 0.1)]]  # seed 2 has no pair
  table = {t["score"]: t for t in study.summarize(rows)}
  arand = table["arand"]
  assert arand["mae"] == pytest.approx(0.35) and arand["scratch"] == pytest.approx(0.35)
  assert arand["mae_better_seeds"] == "1/2" and arand["better"] == "tie"
  assert table["voi_split"]["better"] == "tie"
  rows[1]["arand"] = rows[3]["arand"] = 0.6  # lower ARAND is better: MAE wins on both seeds
  arand = {t["score"]: t for t in study.summarize(rows)}["arand"]
  assert arand["better"] == "mae" and arand["mae_better_seeds"] == "2/2"
