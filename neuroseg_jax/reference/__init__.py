"""Ties to the PyTorch reference: its checkpoint converter and params / FLOPs counted its way.

Not Flax modules, so they live outside models/ (reference/ imports models/, never
the other way round).
"""
