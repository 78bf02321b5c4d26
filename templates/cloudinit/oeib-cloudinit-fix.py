#!/usr/bin/python3
# openeuler-image-builder: cloud-init network probe and fix, run inside the image by the
# kickstart's %post (chroot). Kept in templates/cloudinit/oeib-cloudinit-fix.py.
"""Make the image's cloud-init render MAAS's network config into files the image applies.

MAAS gives non-Ubuntu machines network config v1 (curtin puts it into
/etc/cloud/cloud.cfg.d/50-curtin-networking.cfg); cloud-init renders it at first boot. For
ID=openEuler that fails or goes unused on older cloud-init:

* cloud-init < 23.3 computes the variant ``linux`` (19.4, 21.4) or ``openeuler`` (22.1-23.2)
  and its sysconfig renderer only serves variants in ``KNOWN_DISTROS``: "No available network
  renderers found" (fix ``sysconfig-known-distro``);
* cloud-init < 24.2 writes ``NM_CONTROLLED=no`` into ifcfg files, and NetworkManager, which is
  what configures the network on openEuler, ignores such interfaces: the machine would come up
  without MAAS's addresses unless the legacy network-scripts service is enabled (fix
  ``nm-managed-ifcfg``);
* cloud-init 21.4 and later consider systemd-networkd available wherever ``ip`` and
  ``systemctl`` exist and may pick it; openEuler does not run networkd (fix
  ``renderer-priority`` puts sysconfig and network-manager first);
* cloud-init 23.1-25.1 look for hosts.openeuler.tmpl, which they do not ship (fix
  ``hosts-template``).

The probe renders a MAAS-style v1 config with the renderer cloud-init would pick, looks at the
files it writes, and checks that the enabled network service applies them. ``fix`` applies only
the fixes the probe asks for, probes again in a fresh interpreter, and exits non-zero (failing
the build) if a problem remains.

Usage: oeib-cloudinit-fix.py [probe|fix] [--root DIR] [--json]

Runs under the image's own Python (3.7 on 20.03), so it sticks to what 3.6 has. cloudinit is
imported inside the functions: the fix patches cloud-init's files and probes again in a new
interpreter, and a missing cloud-init must be reported, not crash at import time.
"""
# ruff: noqa: PLC0415
# cloudinit is the image's package, absent where this file is type-checked.
# pyright: reportMissingImports=false, reportAttributeAccessIssue=false

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

MARKER_BEGIN = "# >>> openeuler-image-builder"
MARKER_END = "# <<< openeuler-image-builder"
PREFIX = "OEIB-CLOUDINIT:"

# What MAAS sends for a machine with a bonded pair carrying a VLAN and a plain static NIC.
SAMPLE_NETWORK_CONFIG = {
    "version": 1,
    "config": [
        {
            "type": "physical",
            "id": "eno1",
            "name": "eno1",
            "mac_address": "52:54:00:12:34:01",
            "mtu": 1500,
            "subnets": [
                {
                    "type": "static",
                    "address": "10.20.0.15/24",
                    "gateway": "10.20.0.1",
                    "dns_nameservers": ["10.20.0.2"],
                    "dns_search": ["maas"],
                }
            ],
        },
        {
            "type": "physical",
            "id": "eno2",
            "name": "eno2",
            "mac_address": "52:54:00:12:34:02",
            "mtu": 1500,
            "subnets": [{"type": "manual"}],
        },
        {
            "type": "physical",
            "id": "eno3",
            "name": "eno3",
            "mac_address": "52:54:00:12:34:03",
            "mtu": 1500,
            "subnets": [{"type": "manual"}],
        },
        {
            "type": "bond",
            "id": "bond0",
            "name": "bond0",
            "mac_address": "52:54:00:12:34:02",
            "bond_interfaces": ["eno2", "eno3"],
            "mtu": 1500,
            "params": {"bond-mode": "active-backup", "bond-miimon": 100},
            "subnets": [{"type": "manual"}],
        },
        {
            "type": "vlan",
            "id": "bond0.100",
            "name": "bond0.100",
            "vlan_link": "bond0",
            "vlan_id": 100,
            "mtu": 1500,
            "subnets": [{"type": "static", "address": "10.30.0.15/24"}],
        },
        {"type": "nameserver", "address": ["10.20.0.2"], "search": ["maas"]},
    ],
}
# Renderers whose files NetworkManager (openEuler's network service) applies, in order.
APPLIED_RENDERERS = ("sysconfig", "network-manager")
RENDERER_DROPIN = "etc/cloud/cloud.cfg.d/06_openeuler-image-builder-network.cfg"

# Addresses the rendered files must carry, or the renderer lost MAAS's config.
SAMPLE_ADDRESSES = ("10.20.0.15", "10.30.0.15")

KNOWN_DISTROS_PATCH = """
{begin}: sysconfig-known-distro
# cloud-init {version} computes the variant {variant!r} for ID=openEuler and leaves it out of
# KNOWN_DISTROS, so its sysconfig renderer refuses the machine ("No available network
# renderers found").
if {variant!r} not in KNOWN_DISTROS:
    KNOWN_DISTROS = list(KNOWN_DISTROS) + [{variant!r}]
{end}
"""

NM_MANAGED_PATCH = """
{begin}: nm-managed-ifcfg
# cloud-init {version} writes NM_CONTROLLED=no into ifcfg files; NetworkManager (openEuler's
# network service) then ignores the interface and MAAS's addresses are never configured.
# Leave the key out: NetworkManager's ifcfg-rh plugin manages the interface.
if isinstance(Renderer.iface_defaults, dict):
    for _oeib_defaults in Renderer.iface_defaults.values():
        _oeib_defaults.pop("NM_CONTROLLED", None)
else:
    Renderer.iface_defaults = tuple(
        (_oeib_key, _oeib_value)
        for _oeib_key, _oeib_value in Renderer.iface_defaults
        if _oeib_key != "NM_CONTROLLED"
    )
{end}
"""


def applied_order():
    """The renderers NetworkManager applies that this cloud-init has, in preference order."""
    from cloudinit.net import renderers

    return [name for name in APPLIED_RENDERERS if name in renderers.NAME_TO_RENDERER]


def under(root, path):
    """``path`` below ``root``."""
    return os.path.join(root, path.lstrip("/"))


def any_exists(root, patterns):
    """Whether any glob pattern (below ``root``) matches."""
    return any(glob.glob(under(root, pattern)) for pattern in patterns)


def stack_facts(root):
    """Which network service the image enables, and what it can read."""
    nm_installed = any_exists(
        root, ["usr/sbin/NetworkManager", "usr/lib/systemd/system/NetworkManager.service"]
    )
    nm_enabled = any_exists(root, ["etc/systemd/system/*.wants/NetworkManager.service"])
    ifcfg_rh = any_exists(root, ["usr/lib*/NetworkManager/*/libnm-settings-plugin-ifcfg-rh.so"])
    legacy = any_exists(root, ["etc/sysconfig/network-scripts/ifup-eth"]) and any_exists(
        root, ["etc/rc.d/init.d/network", "usr/lib/systemd/system/network.service"]
    )
    legacy_enabled = legacy and any_exists(
        root, ["etc/rc.d/rc3.d/S*network", "etc/systemd/system/*.wants/network.service"]
    )
    nm_plugins = None
    conf = under(root, "etc/NetworkManager/NetworkManager.conf")
    if os.path.isfile(conf):
        with open(conf, encoding="utf-8", errors="replace") as stream:
            section = ""
            for raw in stream:
                line = raw.strip()
                if line.startswith("["):
                    section = line
                elif section == "[main]" and line.startswith("plugins") and "=" in line:
                    nm_plugins = [p.strip() for p in line.split("=", 1)[1].split(",")]
    return {
        "networkmanager_installed": nm_installed,
        "networkmanager_enabled": nm_enabled,
        "ifcfg_rh_plugin": ifcfg_rh,
        "networkmanager_plugins": nm_plugins,
        "legacy_network_scripts": legacy,
        "legacy_network_enabled": legacy_enabled,
    }


def read_tree(base):
    """Every file below ``base`` as {relative path: text}."""
    files = {}
    for directory, _dirs, names in os.walk(base):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8", errors="replace") as stream:
                files[os.path.relpath(path, base)] = stream.read()
    return files


def system_config():
    """cloud-init's merged system config (cloud.cfg and cloud.cfg.d), as it reads it."""
    from cloudinit import util

    try:
        return util.read_conf_with_confd("/etc/cloud/cloud.cfg")
    except Exception:
        return {}


def configured_renderers(cfg):
    """The renderer priority list of the system config (None: cloud-init's default)."""
    return ((cfg.get("system_info") or {}).get("network") or {}).get("renderers")


def renderer_config(cfg, name):
    """The renderer's settings from the configured distro class (ifcfg paths for sysconfig)."""
    from cloudinit import distros

    distro_name = (cfg.get("system_info") or {}).get("distro") or "rhel"
    try:
        return distros.fetch(distro_name).renderer_configs.get(name)
    except Exception:
        return None


def select_renderer(priority, root):
    """(name, class) of the renderer cloud-init would pick; raises when there is none."""
    import inspect

    from cloudinit.net import renderers

    kwargs = {}
    if "target" in inspect.signature(renderers.select).parameters and root != "/":
        kwargs["target"] = root
    return renderers.select(priority=priority, **kwargs)


def render_sample(renderer_cls, config):
    """Render SAMPLE_NETWORK_CONFIG into a scratch root; return the files written."""
    from cloudinit.net import network_state

    state = network_state.parse_net_config_data(SAMPLE_NETWORK_CONFIG)
    scratch = tempfile.mkdtemp(prefix="oeib-render-")
    try:
        renderer_cls(config=config).render_network_state(state, target=scratch)
        return read_tree(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def probe(root):
    """Everything the fix decides on, as a JSON-serialisable dict."""
    # Import the renderers first: on 21.x importing sysconfig alone is circular.
    from cloudinit import util, version
    from cloudinit.net import (
        renderers,  # noqa: F401
        sysconfig,
    )

    cfg = system_config()
    result = {
        "cloud_init_version": getattr(version, "version_string", lambda: "unknown")(),
        "variant": util.system_info()["variant"],
        "features": sorted(getattr(version, "FEATURES", [])),
        "renderer_priority": configured_renderers(cfg),
        "distro": (cfg.get("system_info") or {}).get("distro"),
        "stack": stack_facts(root),
        "sysconfig_module": sysconfig.__file__,
        "patched": [],
        "renderer": None,
        "renderer_error": None,
        "rendered": {},
        "applied_by": None,
        "problems": [],
        "fixes": [],
    }
    with open(sysconfig.__file__, encoding="utf-8") as stream:
        source = stream.read()
    result["patched"] = sorted(
        line.split(":", 1)[1].strip()
        for line in source.splitlines()
        if line.startswith(MARKER_BEGIN + ":")
    )
    result["variant_known"] = result["variant"] in sysconfig.KNOWN_DISTROS
    try:
        import oauthlib  # noqa: F401
    except ImportError:
        result["problems"].append("python3-oauthlib is missing (MAAS's datasource needs it)")
    if "NETWORK_CONFIG_V2" not in result["features"]:
        result["problems"].append(
            "cloud-init does not list NETWORK_CONFIG_V2: curtin would write ENI config"
        )

    templates = under(root, "etc/cloud/templates")
    if os.path.isfile(os.path.join(templates, "hosts.redhat.tmpl")) and not os.path.isfile(
        os.path.join(templates, "hosts.openeuler.tmpl")
    ):
        result["fixes"].append("hosts-template")

    name, renderer_cls = None, None
    try:
        name, renderer_cls = select_renderer(result["renderer_priority"], root)
    except Exception as error:
        result["renderer_error"] = f"{type(error).__name__}: {error}"
    result["renderer"] = name
    if name not in APPLIED_RENDERERS:
        # Nothing NetworkManager reads would be written: let sysconfig serve this variant and
        # put the renderers NetworkManager applies first (21.4+ pick networkd, which openEuler
        # does not run, wherever `ip` and `systemctl` exist). The next probe checks the result.
        sysconfig_usable = (
            sysconfig.available_sysconfig(root)
            or (
                hasattr(sysconfig, "available_nm_ifcfg_rh")
                and sysconfig.available_nm_ifcfg_rh(root)
            )
            or (hasattr(sysconfig, "available_nm") and sysconfig.available_nm(root))
        )
        if not result["variant_known"] and sysconfig_usable:
            result["fixes"].append("sysconfig-known-distro")
        if (result["renderer_priority"] or [])[: len(applied_order())] != applied_order():
            result["fixes"].append("renderer-priority")
        if not set(result["fixes"]) & {"sysconfig-known-distro", "renderer-priority"}:
            result["problems"].append(
                "no usable network renderer: %s"
                % (
                    result["renderer_error"]
                    or f"cloud-init picks {name}, which nothing on openEuler applies"
                )
            )
        return result
    rendered = render_sample(renderer_cls, renderer_config(cfg, name))
    result["rendered"] = rendered
    text = "\n".join(rendered.values())
    missing = [address for address in SAMPLE_ADDRESSES if address not in text]
    if missing:
        result["problems"].append(
            "the {} renderer dropped MAAS addresses {}".format(name, ", ".join(missing))
        )
    stack = result["stack"]
    ifcfg = [path for path in rendered if "/ifcfg-" in "/" + path]
    keyfiles = [
        path for path in rendered if path.startswith("etc/NetworkManager/system-connections/")
    ]
    unmanaged = [path for path in ifcfg if "NM_CONTROLLED=no" in rendered[path]]
    plugins = stack["networkmanager_plugins"]
    # cloud-init < 23 adds ifcfg-rh to an explicit plugins= line itself (enable_ifcfg_rh).
    plugin_loaded = stack["ifcfg_rh_plugin"] and (
        plugins is None or "ifcfg-rh" in plugins or hasattr(sysconfig, "enable_ifcfg_rh")
    )
    if name == "sysconfig":
        if stack["networkmanager_enabled"]:
            if not plugin_loaded:
                result["problems"].append(
                    "cloud-init writes ifcfg files but NetworkManager does not load its "
                    "ifcfg-rh plugin"
                )
            elif unmanaged:
                result["fixes"].append("nm-managed-ifcfg")
            else:
                result["applied_by"] = "NetworkManager (ifcfg-rh plugin)"
        elif stack["legacy_network_enabled"]:
            result["applied_by"] = "network-scripts (network.service)"
        else:
            result["problems"].append(
                "cloud-init writes ifcfg files but neither NetworkManager nor the legacy "
                "network service is enabled"
            )
        if not ifcfg:
            result["problems"].append("the sysconfig renderer wrote no ifcfg file")
    elif stack["networkmanager_enabled"] and keyfiles:
        result["applied_by"] = "NetworkManager (keyfiles)"
    else:
        result["problems"].append(
            "cloud-init writes NetworkManager keyfiles but NetworkManager is not enabled"
        )
    return result


def append_patch(path, text):
    """Append a patch block to a cloud-init module."""
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(text)
    # Drop stale bytecode so the next interpreter compiles the patched source.
    cache = os.path.join(os.path.dirname(path), "__pycache__")
    stem = os.path.splitext(os.path.basename(path))[0]
    for compiled in glob.glob(os.path.join(cache, stem + ".*.pyc")):
        os.unlink(compiled)


def apply_fix(fix, report, root):
    """Apply one named fix the probe asked for."""
    module = report["sysconfig_module"]
    values = {
        "begin": MARKER_BEGIN,
        "end": MARKER_END,
        "version": report["cloud_init_version"],
        "variant": report["variant"],
    }
    if fix in report["patched"]:
        raise RuntimeError(f"fix {fix} is already applied but the probe still asks for it")
    if fix == "sysconfig-known-distro":
        append_patch(module, KNOWN_DISTROS_PATCH.format(**values))
    elif fix == "nm-managed-ifcfg":
        append_patch(module, NM_MANAGED_PATCH.format(**values))
    elif fix == "renderer-priority":
        path = under(root, RENDERER_DROPIN)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(
                "# Written by openeuler-image-builder: render network config only into files\n"
                "# NetworkManager applies (cloud-init {} would otherwise pick {}).\n"
                "system_info:\n  network:\n    renderers: [{}]\n".format(
                    report["cloud_init_version"],
                    report["renderer"] or "none",
                    ", ".join(applied_order()),
                )
            )
        os.chmod(path, 0o644)
    elif fix == "hosts-template":
        templates = under(root, "etc/cloud/templates")
        shutil.copy2(
            os.path.join(templates, "hosts.redhat.tmpl"),
            os.path.join(templates, "hosts.openeuler.tmpl"),
        )
    else:
        raise RuntimeError(f"unknown fix {fix}")


def probe_in_fresh_interpreter(root):
    """Run the probe in a new process, so patched modules are imported afresh."""
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "probe", "--root", root, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError("the probe failed: " + completed.stderr.strip()[-2000:])
    return json.loads(completed.stdout)


def summary(report):
    """One line about a probe report."""
    return "cloud-init {}, variant {}, renderer {}, applied by {}".format(
        report["cloud_init_version"],
        report["variant"],
        report["renderer"] or "none",
        report["applied_by"] or "nothing",
    )


def fix(root, max_rounds=4):
    """Probe, apply the fixes asked for, and probe again until nothing is left to fix."""
    applied = []
    report = probe_in_fresh_interpreter(root)
    print(PREFIX, "probe:", summary(report), flush=True)
    for _ in range(max_rounds):
        if not report["fixes"]:
            break
        for name in report["fixes"]:
            apply_fix(name, report, root)
            applied.append(name)
            print(PREFIX, "applied fix", name, flush=True)
        report = probe_in_fresh_interpreter(root)
        print(PREFIX, "probe:", summary(report), flush=True)
    report["applied_fixes"] = applied
    if report["fixes"]:
        report["problems"].append(
            "fixes still asked for after {} rounds: {}".format(
                max_rounds, ", ".join(report["fixes"])
            )
        )
    if report["applied_by"] is None and not report["problems"]:
        report["problems"].append("no network service applies cloud-init's network config")
    return report


def main(argv=None):
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="cloud-init network probe and fix for MAAS images"
    )
    parser.add_argument("action", nargs="?", choices=("probe", "fix"), default="fix")
    parser.add_argument("--root", default="/", help="root of the image (default /)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = probe(args.root) if args.action == "probe" else fix(args.root)
    status = 0
    if args.action == "fix":
        for problem in report["problems"]:
            print(PREFIX, "FAILED:", problem, flush=True)
        if report["problems"]:
            status = 1
        else:
            print(
                PREFIX,
                "ok:",
                summary(report),
                "(fixes: %s)" % (", ".join(report["applied_fixes"]) or "none"),
                flush=True,
            )
    if args.json:
        json.dump(report, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
