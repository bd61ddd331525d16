"""Synthetic data with known ground truth: NAKO-like cohorts (``cohort``) and Dixon phantoms."""
