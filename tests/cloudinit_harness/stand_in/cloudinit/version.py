"""Version and features."""

from cloudinit import PROFILE

FEATURES = ["NETWORK_CONFIG_V1", "NETWORK_CONFIG_V2"]


def version_string():
    """The cloud-init version this stand-in mimics."""
    return PROFILE
