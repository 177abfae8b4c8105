"""Encoders, heads and their composition."""
