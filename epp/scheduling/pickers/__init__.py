"""Pickers: each orders the scored candidates into primary and fallbacks."""
