"""Foundations every layer uses.

The release catalogue, settings, errors, atomic files, state paths, progress reporting, time
stamps, signal handling and process helpers. Nothing here imports another layer.
"""
