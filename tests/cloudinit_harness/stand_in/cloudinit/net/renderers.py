"""Renderer selection by priority and availability."""

from cloudinit import PROFILE
from cloudinit.net import eni, netplan, networkd, sysconfig

NAME_TO_RENDERER = {"eni": eni, "sysconfig": sysconfig, "netplan": netplan}
DEFAULT_PRIORITY = ["eni", "sysconfig", "netplan"]
if PROFILE != "19.4":
    NAME_TO_RENDERER["networkd"] = networkd
    DEFAULT_PRIORITY.append("networkd")
if PROFILE not in ("19.4", "21.4"):
    from cloudinit.net import network_manager

    NAME_TO_RENDERER["network-manager"] = network_manager
    DEFAULT_PRIORITY.insert(3, "network-manager")


class RendererNotFoundError(RuntimeError):
    """No renderer in the priority list is available."""


def select(priority=None, target=None):
    """(name, Renderer class) of the first available renderer in ``priority``."""
    priority = priority or DEFAULT_PRIORITY
    unknown = [name for name in priority if name not in NAME_TO_RENDERER]
    if unknown:
        raise ValueError(f"Unknown renderers provided in priority list: {unknown}")
    for name in priority:
        module = NAME_TO_RENDERER[name]
        if module.available(target=target):
            return name, module.Renderer
    raise RendererNotFoundError(
        f"No available network renderers found. Searched through list: {priority}"
    )
