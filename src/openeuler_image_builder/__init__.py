"""Workload of openeuler-image-builder: turn an openEuler release into a MAAS image.

This package never imports ``ops``: the charm (``src/charm.py``) and the CLI
(``openeuler-image-builder``) both call it.
"""

__version__ = "0.1.0"
