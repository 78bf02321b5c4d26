"""system_info() and config reading."""

import os

import yaml

from cloudinit import PROFILE, at_root


def system_info():
    """Platform facts; the variant as each generation computes it for its os-release ID."""
    ident = ""
    with open(at_root("/etc/os-release")) as stream:
        for line in stream:
            if line.startswith("ID="):
                ident = line[3:].strip().strip("\"'").lower()
    if ident in ("centos", "fedora", "rhel", "debian", "ubuntu"):
        variant = ident
    elif ident == "openeuler":
        variant = "linux" if PROFILE in ("19.4", "21.4") else "openeuler"
    else:
        variant = "linux"
    return {"system": "Linux", "variant": variant}


def read_conf_with_confd(path):
    """cloud.cfg merged with cloud.cfg.d/*.cfg (later files win, top-level keys merged)."""
    merged = {}
    files = [at_root(path)]
    confd = at_root(path) + ".d"
    if os.path.isdir(confd):
        files += [
            os.path.join(confd, name)
            for name in sorted(os.listdir(confd))
            if name.endswith(".cfg")
        ]
    for name in files:
        if not os.path.isfile(name):
            continue
        with open(name) as stream:
            data = yaml.safe_load(stream) or {}
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def _merge(old, new):
    result = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result
