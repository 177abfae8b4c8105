"""The names of the int8 schemes ``export`` can build: what ``--int8-scheme`` accepts and which ones ``auto`` tries.

A module of names only (no numpy, no onnx), so the CLI can list them in ``--help`` without loading the exporter.
"""
from __future__ import annotations

TEXT_CANDIDATES = ("dynamic", "dynamic-t4", "nbits8", "mixed", "dynamic-smooth", "dynamic-smooth-t4")
# SmoothQuant-equalised dynamic int8 schemes -> the bits of their largest Gather table (word embeddings).
SMOOTH_SCHEMES = {"dynamic-smooth": 8, "dynamic-smooth-t4": 4}
VISION_CANDIDATES = ("static", "static-head")
# Every scheme --int8-scheme can force.
SCHEMES = VISION_CANDIDATES + TEXT_CANDIDATES
# Vision schemes that calibrate static activation ranges (image models only).
STATIC_SCHEMES = ("static", "static-head")
# What auto selection optimises among the candidates that pass every gate (--int8-prefer): "speed", the fastest
# (of the equally fast, the smallest file), or "size", the smallest file.
PREFERENCES = ("speed", "size")
