"""sysconfig (ifcfg) renderer, per generation; the probe's fixes append to this module."""

import glob
import os

from cloudinit import PROFILE, at_root, util

KNOWN_DISTROS = ["centos", "fedora", "rhel", "suse"]
if PROFILE not in ("19.4", "21.4"):
    KNOWN_DISTROS.append("openeuler")


def available(target=None):
    """The variant is known and ifcfg files can be applied."""
    if util.system_info()["variant"] not in KNOWN_DISTROS:
        return False
    if PROFILE in ("19.4", "21.4"):
        return available_sysconfig(target) or available_nm(target)
    return available_sysconfig(target) or bool(available_nm_ifcfg_rh(target))


def available_sysconfig(target=None):
    """Legacy ifup/ifdown and network-functions."""
    return all(
        any(os.path.exists(at_root(os.path.join(d, tool))) for d in ("/sbin", "/usr/sbin"))
        for tool in ("ifup", "ifdown")
    ) and os.path.isfile(at_root("/etc/sysconfig/network-scripts/network-functions"))


if PROFILE in ("19.4", "21.4"):

    def available_nm(target=None):
        """NetworkManager.conf exists."""
        return os.path.isfile(at_root("/etc/NetworkManager/NetworkManager.conf"))

    def enable_ifcfg_rh(path):
        """Add ifcfg-rh to an explicit plugins= line (19.4 and 21.4 do this when rendering)."""

else:

    def available_nm_ifcfg_rh(target=None):
        """NetworkManager's ifcfg-rh plugin is installed."""
        return glob.glob(at_root("/usr/lib*/NetworkManager/*/libnm-settings-plugin-ifcfg-rh.so"))


class Renderer:
    """Writes ifcfg-<name> files."""

    if PROFILE == "19.4":
        iface_defaults = (
            ("ONBOOT", True),
            ("USERCTL", False),
            ("NM_CONTROLLED", False),
            ("BOOTPROTO", "none"),
        )
    elif PROFILE in ("21.4", "23.4.1"):
        iface_defaults = {
            "rhel": {"ONBOOT": True, "USERCTL": False, "NM_CONTROLLED": False, "BOOTPROTO": "none"}
        }
    else:
        iface_defaults = {"rhel": {"ONBOOT": True, "USERCTL": False, "BOOTPROTO": "none"}}

    def __init__(self, config=None):
        self.config = config or {}

    def render_network_state(self, network_state, templates=None, target="/"):
        """One ifcfg file per interface, with the flavour's defaults."""
        defaults = self.iface_defaults
        if isinstance(defaults, dict):
            defaults = tuple(defaults["rhel"].items())
        base = os.path.join(target, "etc/sysconfig/network-scripts")
        os.makedirs(base, exist_ok=True)
        for entry in network_state:
            if entry.get("type") not in ("physical", "bond", "vlan"):
                continue
            lines = ["DEVICE={}".format(entry["name"])]
            for key, default in defaults:
                value = ("yes" if default else "no") if isinstance(default, bool) else default
                lines.append(f"{key}={value}")
            for subnet in entry.get("subnets", []):
                if subnet.get("type") == "static":
                    address, _, prefix = subnet["address"].partition("/")
                    lines += [f"IPADDR={address}", f"PREFIX={prefix}"]
            with open(os.path.join(base, "ifcfg-{}".format(entry["name"])), "w") as stream:
                stream.write("\n".join(lines) + "\n")
