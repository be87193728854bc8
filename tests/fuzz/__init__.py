"""Fuzz targets for every parser of outside input (see tests/fuzz/harness.py)."""
