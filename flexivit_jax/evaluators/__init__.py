"""Evaluation: metrics, predictors at any size, and evaluation outside a training run."""
