"""Runnable studies and benchmarks; importable so that tests and other studies reuse them.

Run from the repository root, e.g. `python -m experiments.label_efficiency --workdir DIR`.
"""
