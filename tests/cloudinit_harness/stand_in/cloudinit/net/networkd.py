"""systemd-networkd renderer: cloud-init 21.4+ call it available wherever ip and systemctl are."""

import os

from cloudinit import at_root


def available(target=None):
    """ip and systemctl exist."""
    return all(
        any(
            os.path.exists(at_root(os.path.join(d, tool)))
            for d in ("/usr/sbin", "/bin", "/usr/bin")
        )
        for tool in ("ip", "systemctl")
    )


class Renderer:
    """Writes .network files."""

    def __init__(self, config=None):
        self.config = config

    def render_network_state(self, network_state, templates=None, target="/"):
        """Write one .network file per interface."""
        base = os.path.join(target, "etc/systemd/network")
        os.makedirs(base, exist_ok=True)
        for entry in network_state:
            if entry.get("type") in ("physical", "bond", "vlan"):
                with open(
                    os.path.join(base, "10-cloud-init-{}.network".format(entry["name"])), "w"
                ) as stream:
                    stream.write("[Match]\nName={}\n".format(entry["name"]))
