"""Filters: each narrows the candidate endpoints, one plugin per module."""
