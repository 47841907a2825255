"""Robustness: what brings an erased concept back, and what takes it out of an image (purify)."""
