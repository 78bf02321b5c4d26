"""The cloud-init network probe/fix (templates/cloudinit/oeib-cloudinit-fix.py) with stand-ins.

The script runs as in the image's %post (a child Python process), against a stand-in of each
cloud-init generation openEuler ships (tests/cloudinit_harness/stand_in; 19.4 for 20.03,
21.4 for 22.03, 23.4.1 for 24.03, 24.2 for a current one) and a fake root shaped like an
openEuler image (NetworkManager enabled with its ifcfg-rh plugin, ip and systemctl present).
Runs against real cloud-init are tests/unit/test_cloudinit_real.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FIX = Path(__file__).resolve().parents[2] / "templates" / "cloudinit" / "oeib-cloudinit-fix.py"
STAND_IN = Path(__file__).resolve().parents[1] / "cloudinit_harness" / "stand_in"


def make_root(
    root: Path,
    *,
    nm_enabled: bool = True,
    ifcfg_rh_plugin: bool = True,
    legacy_enabled: bool = False,
    renderers: list[str] | None = None,
    nm_plugins: str | None = None,
    hosts_openeuler: bool = False,
) -> Path:
    """A root with what the probe looks at on an openEuler image."""

    def write(path: str, text: str = "", mode: int = 0o644) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    write("etc/os-release", 'NAME="openEuler"\nID="openEuler"\nVERSION_ID="22.03"\n')
    cloud_cfg: dict[str, Any] = {"system_info": {"distro": "openEuler"}}
    if renderers is not None:
        cloud_cfg["system_info"]["network"] = {"renderers": renderers}
    write("etc/cloud/cloud.cfg", json.dumps(cloud_cfg))
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    write("etc/cloud/templates/hosts.redhat.tmpl", "## template:jinja\n127.0.0.1 localhost\n")
    if hosts_openeuler:
        write("etc/cloud/templates/hosts.openeuler.tmpl", "## template:jinja\n")
    for tool in ("usr/sbin/ip", "usr/bin/systemctl", "usr/sbin/NetworkManager", "usr/bin/nmcli"):
        write(tool, "#!/bin/sh\n", 0o755)
    write("usr/lib/systemd/system/NetworkManager.service", "[Service]\n")
    main = "[main]\n" + (f"plugins={nm_plugins}\n" if nm_plugins else "")
    write("etc/NetworkManager/NetworkManager.conf", main)
    if nm_enabled:
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True)
        (wants / "NetworkManager.service").symlink_to(
            "/usr/lib/systemd/system/NetworkManager.service"
        )
    if ifcfg_rh_plugin:
        write("usr/lib64/NetworkManager/1.32.12-1/libnm-settings-plugin-ifcfg-rh.so")
    if legacy_enabled:
        for path in (
            "usr/sbin/ifup",
            "usr/sbin/ifdown",
            "etc/rc.d/init.d/network",
            "etc/sysconfig/network-scripts/ifup-eth",
            "etc/sysconfig/network-scripts/network-functions",
        ):
            write(path, "#!/bin/sh\n", 0o755)
        (root / "etc/rc.d/rc3.d").mkdir(parents=True)
        (root / "etc/rc.d/rc3.d/S10network").symlink_to("../init.d/network")
    return root


def run_fix(
    tmp_path: Path, profile: str, root: Path, action: str = "fix", *, oauthlib: bool = True
) -> tuple[int, str, dict[str, Any], Path]:
    """Run the script with a private copy of the stand-in (the fix edits its files)."""
    packages = tmp_path / "site"
    shutil.copytree(STAND_IN, packages)
    if not oauthlib:  # shadow any oauthlib of this Python: the image would lack the package
        (packages / "oauthlib" / "__init__.py").write_text(
            'raise ImportError("No module named oauthlib")\n'
        )
    completed = subprocess.run(
        [sys.executable, str(FIX), action, "--root", str(root), "--json"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(packages),
            "STANDIN_CLOUDINIT_PROFILE": profile,
            "STANDIN_ROOT": str(root),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = completed.stdout
    start = lines.find("{\n")
    assert start >= 0, completed.stdout + completed.stderr
    return completed.returncode, lines[:start], json.loads(lines[start:]), packages


def ifcfg_files(report: dict[str, Any]) -> dict[str, str]:
    return {path: text for path, text in report["rendered"].items() if "/ifcfg-" in path}


@pytest.mark.parametrize(
    ("profile", "fixes", "patched"),
    [
        (
            "19.4",
            ["hosts-template", "sysconfig-known-distro", "renderer-priority", "nm-managed-ifcfg"],
            ["nm-managed-ifcfg", "sysconfig-known-distro"],
        ),
        (
            "21.4",
            ["hosts-template", "sysconfig-known-distro", "renderer-priority", "nm-managed-ifcfg"],
            ["nm-managed-ifcfg", "sysconfig-known-distro"],
        ),
        ("23.4.1", ["hosts-template", "nm-managed-ifcfg"], ["nm-managed-ifcfg"]),
        ("24.2", ["hosts-template"], []),
    ],
)
def test_each_generation_ends_with_networkmanager_managed_ifcfg(
    tmp_path: Path, profile: str, fixes: list[str], patched: list[str]
) -> None:
    root = make_root(tmp_path / "root")
    status, output, report, packages = run_fix(tmp_path, profile, root)
    assert status == 0, output
    assert report["applied_fixes"] == fixes
    assert report["patched"] == patched
    assert report["renderer"] == "sysconfig"
    assert report["applied_by"] == "NetworkManager (ifcfg-rh plugin)"
    files = ifcfg_files(report)
    assert set(files) == {
        f"etc/sysconfig/network-scripts/ifcfg-{name}"
        for name in ("eno1", "eno2", "eno3", "bond0", "bond0.100")
    }
    assert not any("NM_CONTROLLED" in text for text in files.values())
    assert "IPADDR=10.20.0.15" in files["etc/sysconfig/network-scripts/ifcfg-eno1"]
    assert (root / "etc/cloud/templates/hosts.openeuler.tmpl").is_file()
    assert output.strip().splitlines()[-1].startswith("OEIB-CLOUDINIT: ok: cloud-init " + profile)
    # the patches are in cloud-init's own module, between markers, once each
    source = (packages / "cloudinit/net/sysconfig.py").read_text()
    for name in patched:
        assert source.count(f"# >>> openeuler-image-builder: {name}") == 1


def test_probe_alone_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    status, _, report, packages = run_fix(tmp_path, "21.4", root, action="probe")
    assert status == 0
    assert report["renderer"] == "networkd"  # what 21.4 would do on openEuler unfixed
    assert report["variant"] == "linux"
    assert report["fixes"] == ["hosts-template", "sysconfig-known-distro", "renderer-priority"]
    assert "openeuler-image-builder" not in (packages / "cloudinit/net/sysconfig.py").read_text()
    assert not (root / "etc/cloud/templates/hosts.openeuler.tmpl").exists()
    assert not list((root / "etc/cloud/cloud.cfg.d").iterdir())


def test_19_4_without_fixes_finds_no_renderer(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    _, _, report, _ = run_fix(tmp_path, "19.4", root, action="probe")
    assert report["renderer"] is None
    assert "No available network renderers found" in report["renderer_error"]


def test_renderer_priority_dropin_puts_networkmanager_renderers_first(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", renderers=["networkd", "sysconfig"])
    status, output, report, _ = run_fix(tmp_path, "23.4.1", root)
    assert status == 0, output
    assert "renderer-priority" in report["applied_fixes"]
    dropin = root / "etc/cloud/cloud.cfg.d/06_openeuler-image-builder-network.cfg"
    assert "renderers: [sysconfig, network-manager]" in dropin.read_text()
    assert report["renderer_priority"] == ["sysconfig", "network-manager"]


def test_legacy_network_service_without_networkmanager_keeps_nm_controlled(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path / "root", nm_enabled=False, legacy_enabled=True)
    status, output, report, _ = run_fix(tmp_path, "23.4.1", root)
    assert status == 0, output
    assert report["applied_by"] == "network-scripts (network.service)"
    assert "nm-managed-ifcfg" not in report["applied_fixes"]
    assert all("NM_CONTROLLED=no" in text for text in ifcfg_files(report).values())


def test_keyfiles_when_only_the_networkmanager_renderer_is_usable(tmp_path: Path) -> None:
    root = make_root(
        tmp_path / "root", ifcfg_rh_plugin=False, renderers=["sysconfig", "network-manager"]
    )
    status, output, report, _ = run_fix(tmp_path, "23.4.1", root)
    assert status == 0, output
    assert report["renderer"] == "network-manager"
    assert report["applied_by"] == "NetworkManager (keyfiles)"
    keyfile = report["rendered"][
        "etc/NetworkManager/system-connections/cloud-init-eno1.nmconnection"
    ]
    assert "address1=10.20.0.15/24" in keyfile


@pytest.mark.parametrize(
    ("root_options", "profile", "oauthlib", "problem"),
    [
        (
            {"ifcfg_rh_plugin": False},
            "21.4",
            True,
            "NetworkManager does not load its ifcfg-rh plugin",
        ),
        (
            {"nm_plugins": "keyfile"},
            "24.2",
            True,
            "NetworkManager does not load its ifcfg-rh plugin",
        ),
        (
            {"nm_enabled": False},
            "24.2",
            True,
            "neither NetworkManager nor the legacy network service is enabled",
        ),
        ({}, "24.2", False, "python3-oauthlib is missing"),
    ],
)
def test_build_fails_when_the_network_would_not_come_up(
    tmp_path: Path, root_options: dict[str, Any], profile: str, oauthlib: bool, problem: str
) -> None:
    root = make_root(tmp_path / "root", **root_options)
    status, output, report, _ = run_fix(tmp_path, profile, root, oauthlib=oauthlib)
    assert status == 1
    assert any(problem in line for line in report["problems"]), report["problems"]
    assert f"OEIB-CLOUDINIT: FAILED: {report['problems'][0]}" in output


def test_fix_is_idempotent(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    run_fix(tmp_path / "first", "21.4", root)
    packages = tmp_path / "first" / "site"
    completed = subprocess.run(
        [sys.executable, str(FIX), "fix", "--root", str(root), "--json"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(packages),
            "STANDIN_CLOUDINIT_PROFILE": "21.4",
            "STANDIN_ROOT": str(root),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "(fixes: none)" in completed.stdout
    source = (packages / "cloudinit/net/sysconfig.py").read_text()
    assert source.count("# >>> openeuler-image-builder: nm-managed-ifcfg") == 1
