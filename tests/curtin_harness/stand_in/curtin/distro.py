"""Distro detection from the target's /etc/os-release, as curtin does it."""

import os
from collections import namedtuple

from curtin import PROFILE, paths, util

DistroInfo = namedtuple("DistroInfo", ("variant", "family"))
DISTRO_NAMES = [
    "arch",
    "centos",
    "debian",
    "fedora",
    "freebsd",
    "gentoo",
    "ol",
    "opensuse",
    "redhat",
    "rhel",
    "sles",
    "suse",
    "ubuntu",
    "rocky",
    "almalinux",
    "mariner",
]


def distro_enum(*names):
    """A named tuple whose fields are the distro names, each holding its own name."""
    return namedtuple("Distros", names)(*names)


DISTROS = distro_enum(*DISTRO_NAMES)
OS_FAMILIES = {
    DISTROS.debian: [DISTROS.debian, DISTROS.ubuntu],
    DISTROS.redhat: [
        DISTROS.centos,
        DISTROS.fedora,
        DISTROS.ol,
        DISTROS.redhat,
        DISTROS.rhel,
        DISTROS.rocky,
        DISTROS.almalinux,
        DISTROS.mariner,
    ],
    DISTROS.suse: [DISTROS.opensuse, DISTROS.sles, DISTROS.suse],
}
if PROFILE != "no-osfamily-map":
    DISTRO_TO_OSFAMILY = {
        variant: family for family, variants in OS_FAMILIES.items() for variant in variants
    }


def name_to_distro(name):
    """The DISTROS member for ``name``; ValueError when unknown."""
    return DISTROS[DISTROS.index(name)]


def os_release(target=None):
    """The target's os-release as a dict (symlinks are followed on the host, as curtin does)."""
    path = paths.target_path(target, "etc/os-release")
    data = {}
    if os.path.exists(path):
        with open(path) as stream:
            for line in stream:
                key, sep, value = line.strip().partition("=")
                if sep:
                    data[key] = value.strip("\"'")
    return data


def get_distroinfo(target=None):
    """(variant, family) of the target; ID_LIKE is tried when ID is unknown."""
    release = os_release(target=target)
    try:
        variant = name_to_distro(release["ID"])
    except ValueError:
        for name in release["ID_LIKE"].split():
            try:
                variant = name_to_distro(name)
                break
            except ValueError:
                pass
        else:
            raise ValueError("Unknown distro: {}".format(release["ID"])) from None
    family_map = globals().get("DISTRO_TO_OSFAMILY", {})
    return DistroInfo(variant, family_map.get(variant))


def get_osfamily(target=None):
    """The target's distro family."""
    return get_distroinfo(target=target).family


def rpm_get_dist_id(target=None):
    """``rpm -E %rhel`` in the target."""
    with util.ChrootableTarget(target) as in_chroot:
        out, _ = in_chroot.subp(["rpm", "-E", "%rhel"], capture=True)
    return out.rstrip()


def get_architecture(target=None):
    """``rpm -E %_arch`` in the target."""
    with util.ChrootableTarget(target) as in_chroot:
        out, _ = in_chroot.subp(["rpm", "-E", "%_arch"], capture=True)
    return out.strip()


def get_installed_packages(target=None):
    """Names of the packages installed in the target (rpm -qa)."""
    with util.ChrootableTarget(target) as in_chroot:
        out, _ = in_chroot.subp(
            ["rpm", "-qa", "--queryformat", "ii %{NAME} %{VERSION}\n"], capture=True
        )
    return {line.split()[1] for line in out.splitlines() if line.startswith("ii ")}
