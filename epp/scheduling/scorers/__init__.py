"""Scorers: each rates every candidate in [0, 1] (higher is better), one plugin per module."""
