"""Netplan renderer: never available on openEuler."""


def available(target=None):
    """Whether netplan exists (never here)."""
    return False
