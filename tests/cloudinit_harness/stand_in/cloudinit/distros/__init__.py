"""Distro classes (only their renderer settings)."""

from typing import ClassVar


class Distro:
    """A redhat-like distro."""

    renderer_configs: ClassVar[dict] = {
        "sysconfig": {
            "control": "etc/sysconfig/network",
            "iface_templates": "%(base)s/network-scripts/ifcfg-%(name)s",
        }
    }


def fetch(name):
    """The distro class for ``name``."""
    return Distro
