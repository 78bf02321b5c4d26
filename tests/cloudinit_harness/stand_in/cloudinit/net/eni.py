"""ENI renderer: never available on openEuler."""


def available(target=None):
    """Whether /etc/network/interfaces tooling exists (never here)."""
    return False
