"""Phantoms, metrics, baselines and the demo."""
