"""Launching studies: search spaces, the Ray Tune + Optuna sweep, MLflow logging, reruns, the CLI."""
