"""NetworkManager keyfile renderer (23.x and later)."""

import glob
import os

from cloudinit import at_root


def available(target=None):
    """NetworkManager.conf, nmcli and the service enabled."""
    return (
        os.path.isfile(at_root("/etc/NetworkManager/NetworkManager.conf"))
        and os.path.exists(at_root("/usr/bin/nmcli"))
        and bool(glob.glob(at_root("/etc/systemd/system/*.wants/NetworkManager.service")))
    )


class Renderer:
    """Writes NetworkManager keyfiles."""

    def __init__(self, config=None):
        self.config = config

    def render_network_state(self, network_state, templates=None, target="/"):
        """One keyfile per interface."""
        base = os.path.join(target, "etc/NetworkManager/system-connections")
        os.makedirs(base, exist_ok=True)
        for entry in network_state:
            if entry.get("type") not in ("physical", "bond", "vlan"):
                continue
            lines = ["[connection]", "id=cloud-init {}".format(entry["name"])]
            for subnet in entry.get("subnets", []):
                if subnet.get("type") == "static":
                    lines += ["[ipv4]", "method=manual", "address1={}".format(subnet["address"])]
            path = os.path.join(base, "cloud-init-{}.nmconnection".format(entry["name"]))
            with open(path, "w") as stream:
                stream.write("\n".join(lines) + "\n")
