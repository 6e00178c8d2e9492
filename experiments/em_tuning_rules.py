"""ISBI study rows: how much the choice of watershed parameters moves a run's score.

  python -m experiments.em_tuning_rules --out DIR --rows unetr:15:0 unetr_mae:15:0 ...
      [--seed-quantiles 0.2 0.3 0.4 0.5 0.6 0.7]

For finished network rows of `experiments/em_isbi_study.py --out DIR` (METHOD:LABELED:SEED,
run folder DIR/METHOD_nLABELED_sSEED, with its fold runs DIR/..._fold{k} when the study ran
with --tune-folds), every combination of the config's watershed grid is scored on three
sets of boundary maps: the run's maps of its own training slices (in-sample), the fold
runs' maps of the training slices they did not train on (out of fold), and the run's
maps of slices 15-19. Each rule below picks parameters from the first two only; the
table gives slices 15-19's mean adapted Rand error with each pick, and the oracle (the
best on 15-19 itself, a bound). With --seed-quantiles the grid also holds seeded
watersheds thresholded at those quantiles of each slice, and the rules are repeated
over them alone ("quantile"); the other rules and the oracle keep the config's
absolute thresholds, so their values do not change. Writes DIR/tuning_rules.json (one
entry per row; rows already there are not computed again) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import numpy as np

from experiments import slice_runs
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.evaluation import slice_segmentation
from neuroseg_jax.tasks import em_slices
from neuroseg_jax.training import loop


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  sources: tuple[str, ...]  # "in_sample" / "out_of_fold": their mean ARANDs are summed
  threshold_only: bool = False  # the other fields fixed by `simplest`
  quantile: bool = False  # candidates: the seed thresholds at per-slice quantiles


ABSOLUTE_RULES = (Rule("in-sample", ("in_sample",)), Rule("out of fold", ("out_of_fold",)),
                  Rule("in-sample + out of fold", ("in_sample", "out_of_fold")),
                  Rule("in-sample, threshold only", ("in_sample",), True),
                  Rule("out of fold, threshold only", ("out_of_fold",), True))
QUANTILE_RULES = tuple(dataclasses.replace(rule, name=f"{rule.name}, quantile", quantile=True)
                       for rule in ABSOLUTE_RULES)


def rules_for(grid: slice_segmentation.WatershedGrid) -> tuple[Rule, ...]:
  """The absolute-threshold rules, and their quantile twins when the grid has quantiles."""
  return ABSOLUTE_RULES + (QUANTILE_RULES if grid.seed_quantile else ())


def simplest(params: slice_segmentation.WatershedParams,
             grid: slice_segmentation.WatershedGrid) -> bool:
  """Whether `params` is a seeded watershed without smoothing or erosion beyond the grid's
  least, at its middle seed size."""
  sizes = sorted(grid.min_seed_size)
  return (params.merge_threshold == 0 and params.smoothing == min(grid.smoothing)
          and params.seed_erosion == min(grid.seed_erosion)
          and params.min_seed_size == sizes[len(sizes) // 2])


def choose(rule: Rule, means: dict[str, dict], grid: slice_segmentation.WatershedGrid
           ) -> slice_segmentation.WatershedParams:
  """The params of lowest summed mean ARAND over the rule's sources ({source: {params:
  mean ARAND}}), among the grid's absolute or quantile thresholds (as the rule says)
  or, threshold only, the `simplest` of them."""
  candidates = [p for p in means[rule.sources[0]]
                if (p.seed_quantile > 0) == rule.quantile
                and (not rule.threshold_only or simplest(p, grid))]
  return min(candidates, key=lambda p: sum(means[s][p] for s in rule.sources))


def row_scores(task, state, workdir: str, folds: int,
               grid: slice_segmentation.WatershedGrid) -> dict[str, float]:
  """{rule name: slices 15-19's mean ARAND with the rule's pick, "oracle": the best over
  the absolute thresholds, "oracle, quantile": over the quantiles (if any)}."""

  def mean_table(maps, labels):
    return slice_segmentation.mean_table(slice_segmentation.slice_tables(maps, labels, grid))

  held_out = mean_table(slice_runs.boundary_maps(task, state, task.val_index),
                        em_slices.read_slices(task.labels, task.val_index))
  oof_maps, train_labels, _ = slice_runs.out_of_fold_maps(task, workdir, folds)
  means = {"in_sample": mean_table(slice_runs.boundary_maps(task, state, task.train_index),
                                   train_labels),
           "out_of_fold": mean_table(oof_maps, train_labels)}
  scores = {rule.name: held_out[choose(rule, means, grid)] for rule in rules_for(grid)}
  for name, quantile in (("oracle", False), ("oracle, quantile", True)):
    values = [v for p, v in held_out.items() if (p.seed_quantile > 0) == quantile]
    if values:
      scores[name] = min(values)
  return scores


def table(results: dict[str, dict]) -> str:
  """Markdown: per (method, labeled) and rule (the columns every row has), the mean
  over seeds (per seed)."""
  first, *others = results.values()
  names = [name for name in first if all(name in row for row in others)]
  lines = ["| method | labeled | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  groups: dict[tuple, list] = {}
  for key, scores in sorted(results.items()):
    method, labeled, _ = key.split(":")
    groups.setdefault((method, int(labeled)), []).append(scores)
  for (method, labeled), rows in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
    cells = [f"{np.mean([r[n] for r in rows]):.4f} (" +
             ", ".join(f"{r[n]:.3f}" for r in rows) + ")" for n in names]
    lines.append(f"| {method} | {labeled} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="an em_isbi_study output folder")
  parser.add_argument("--rows", nargs="+", required=True, metavar="METHOD:LABELED:SEED")
  parser.add_argument("--tune-folds", type=int, default=2, metavar="K")
  parser.add_argument("--seed-quantiles", type=float, nargs="*", default=[], metavar="Q",
                      help="also try seed thresholds at these quantiles of each slice (0-1)")
  args = parser.parse_args()
  if not all(0 < q < 1 for q in args.seed_quantiles):
    parser.error(f"--seed-quantiles: every value must lie in (0, 1), got {args.seed_quantiles}")
  with open(os.path.join(args.out, "em_isbi_study.json")) as f:
    specs = {f"{r['method']}:{r.get('labeled')}:{r.get('seed')}": r.get("config")
             for r in json.load(f)}
  result_path = os.path.join(args.out, "tuning_rules.json")
  results = json.load(open(result_path)) if os.path.exists(result_path) else {}
  for key in args.rows:
    if key in results and (not args.seed_quantiles or "oracle, quantile" in results[key]):
      continue
    method, labeled, seed = key.split(":")
    workdir = os.path.join(args.out, f"{method}_n{labeled}_s{seed}")
    if not specs.get(key) or not os.path.isdir(workdir):
      parser.error(f"{key}: no finished study row with a run folder {workdir}")
    task = tasks.build(config_loading.load_config(specs[key]))
    state = loop.train(task, workdir, devices=jax.devices()[:1])
    grid = dataclasses.replace(em_slices.watershed_grid(task.config.eval),
                               seed_quantile=tuple(args.seed_quantiles))
    results[key] = row_scores(task, state, workdir, args.tune_folds, grid)
    print(key, json.dumps(results[key]), flush=True)
    with open(result_path, "w") as f:
      json.dump(results, f, indent=1)
  print(table({k: results[k] for k in args.rows}))


if __name__ == "__main__":
  main()
