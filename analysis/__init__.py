"""Pure functions over a study's MLflow runs: tables, overfitting measures, Pareto fronts, figures."""
