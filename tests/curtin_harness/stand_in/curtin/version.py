"""Version of the stand-in."""

from curtin import PROFILE


def version_string():
    """The stand-in's version, naming the profile it mimics."""
    return f"stand-in ({PROFILE})"
