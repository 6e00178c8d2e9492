"""A PyTorch replica of the authors' NeuroSeg-III training step, for side-by-side timing.

Issue 12 sets a speed goal relative to the authors' PyTorch step (a fork of
ultralytics 8.0.202), which cannot be installed here (no network, and ultralytics is
not on the package index). This package rebuilds that step from the facts the project
holds: the network with the reference's module names (`network.py`; its outputs
are checked against the authors' fixtures in ../shared/reference/neuroseg3 when
torch is installed), the YOLOv8-seg loss as ultralytics computes it (`seg_loss.py`)
and one AdamW step on a batch (`step.py`). Only the benchmark uses it
(`experiments/benchmark_train_step.py --torch-batches`); torch is the optional
`reference` extra, never a dependency of the package.
"""
