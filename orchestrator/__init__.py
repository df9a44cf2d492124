"""Sweep orchestration: CLI, spec and grid, stages, Ray Tune trials, MLflow tracking."""
