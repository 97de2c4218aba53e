"""Bring your own model: a user-style residual 1-D CNN, its training script and its data file."""
