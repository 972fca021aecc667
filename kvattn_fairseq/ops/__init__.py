"""Torch-only attention math, one file per kind: a naive reference, the parallel (training) path and the step path."""
