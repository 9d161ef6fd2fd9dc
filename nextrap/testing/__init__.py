"""Planted LoRA trajectories written in a trainer's layout, for tests, benchmarks and ``demo --synthetic``."""
