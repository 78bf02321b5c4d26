"""A stand-in for cloud-init: only what the image's network probe/fix uses.

Written for the tests (no cloud-init code is copied). ``STANDIN_CLOUDINIT_PROFILE`` picks the
generation it behaves like (19.4, 21.4, 23.4.1, 24.2); ``STANDIN_ROOT`` is the root it reads
/etc/os-release and /etc/cloud from (the probe runs with ``--root`` there).

- 19.4: variant ``linux`` for ID=openEuler, not in KNOWN_DISTROS; default renderers eni,
  sysconfig, netplan; ifcfg defaults a tuple with NM_CONTROLLED=no; sysconfig usable when
  NetworkManager.conf exists;
- 21.4: as 19.4 with a dict of defaults, and networkd (available wherever ip and systemctl
  exist) last in the default priority;
- 23.4.1: variant ``openeuler`` in KNOWN_DISTROS; sysconfig usable with the ifcfg-rh plugin;
  a network-manager renderer; still NM_CONTROLLED=no; no hosts.openeuler.tmpl;
- 24.2: no NM_CONTROLLED.
"""

import os

PROFILE = os.environ.get("STANDIN_CLOUDINIT_PROFILE", "24.2")
ROOT = os.environ.get("STANDIN_ROOT", "/")


def at_root(path):
    """``path`` below the stand-in's root."""
    return os.path.join(ROOT, path.lstrip("/"))
