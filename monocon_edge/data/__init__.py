"""Data sets, splits and transforms."""
