"""Worked examples of using slimray with your own model and data."""
