"""Run the in-image curtin hook against a curtin (real or stand-in) with a synthetic target.

The hook runs as curtin runs it: a separate Python process, ``__main__``, with curtin's
environment variables (``TARGET_MOUNT_POINT``, ``CONFIG``, ``OUTPUT_FSTAB``...) and curtin on
``sys.path``. Only what touches the host is replaced before the hook starts:

- ``curtin.util.subp`` (every command curtin runs, in the target or not) records the command
  and answers like openEuler's tools would (``rpm -E %rhel`` prints ``%rhel`` because openEuler
  does not define it; ``rpm -qa`` lists the image's packages; ``efibootmgr -v`` shows the
  entries created so far);
- bind mounts (``curtin.util.do_mount``), UEFI detection (``is_uefi_bootable``), the machine
  type (``platform.machine``) and block-device discovery (``curtin.block``), which read the host;
- ``get_path_to_storage_volume`` maps MAAS storage-config ids to device paths.

curtin's own logic (distro detection, package checks, dracut, boot-loader command generation)
is not replaced. ``run_hook()`` starts the child and returns what it recorded.

Used by tests/unit/test_curtin_hook*.py with the stand-in curtin in ``stand_in/`` and, when
``OEIB_CURTIN_SOURCES`` names checkouts of canonical/curtin, with real curtin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STAND_IN = HERE / "stand_in"

# What curtin's redhat path checks with rpm -qa (curtin-and-cloud-init.md section 4).
IMAGE_PACKAGES = {
    "x86_64": [
        "kernel",
        "dracut",
        "rpm",
        "dnf",
        "cloud-init",
        "python3-oauthlib",
        "grub2-pc",
        "grub2-pc-modules",
        "grub2-efi-x64",
        "grub2-efi-x64-modules",
        "shim-x64",
        "efibootmgr",
        "lvm2",
        "mdadm",
        "e2fsprogs",
        "xfsprogs",
        "dosfstools",
        "cryptsetup",
    ],
    "aarch64": [
        "kernel",
        "dracut",
        "rpm",
        "dnf",
        "cloud-init",
        "python3-oauthlib",
        "grub2-efi-aa64",
        "grub2-efi-aa64-modules",
        "shim-aa64",
        "efibootmgr",
        "lvm2",
        "mdadm",
        "e2fsprogs",
        "xfsprogs",
        "dosfstools",
        "cryptsetup",
    ],
}

MAAS_NETWORK_CONFIG = {
    "network": {
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
                    }
                ],
            }
        ],
    }
}


def storage_config(uefi: bool) -> dict[str, Any]:
    """A MAAS-style storage layout: GPT disk, ESP (UEFI) or bios_grub (BIOS), ext4 root."""
    first = (
        {
            "id": "sda-part1",
            "type": "partition",
            "device": "sda",
            "number": 1,
            "size": 536870912,
            "flag": "boot",
            "grub_device": True,
        }
        if uefi
        else {
            "id": "sda-part1",
            "type": "partition",
            "device": "sda",
            "number": 1,
            "size": 1048576,
            "flag": "bios_grub",
        }
    )
    config: list[dict[str, Any]] = [
        {
            "id": "sda",
            "type": "disk",
            "ptable": "gpt",
            "path": "/dev/sda",
            "name": "sda",
            "grub_device": not uefi,
            "wipe": "superblock",
        },
        first,
        {
            "id": "sda-part2",
            "type": "partition",
            "device": "sda",
            "number": 2,
            "size": 10737418240,
        },
        {"id": "sda-part2_format", "type": "format", "volume": "sda-part2", "fstype": "ext4"},
        {"id": "sda-part2_mount", "type": "mount", "device": "sda-part2_format", "path": "/"},
    ]
    if uefi:
        config += [
            {
                "id": "sda-part1_format",
                "type": "format",
                "volume": "sda-part1",
                "fstype": "fat32",
                "label": "efi",
            },
            {
                "id": "sda-part1_mount",
                "type": "mount",
                "device": "sda-part1_format",
                "path": "/boot/efi",
            },
        ]
    return {"version": 1, "config": config}


def curtin_config(uefi: bool, *, crash_dumps: bool | None = False) -> dict[str, Any]:
    """The parts of MAAS's curtin config the built-in hooks read."""
    config: dict[str, Any] = {
        "storage": storage_config(uefi),
        "swap": {"size": 0},
        "grub": {"update_nvram": True},
        "cloudconfig": {
            "maas-datasource": {
                "content": "datasource:\n  MAAS: {metadata_url: 'http://10.20.0.2:5248/MAAS/metadata/'}\n",
                "path": "/etc/cloud/cloud.cfg.d/90_dpkg_maas.cfg",
            }
        },
        "kernel": {"package": "kernel"},
    }
    if crash_dumps is not None:
        config["kernel-crash-dumps"] = {"enabled": crash_dumps}
    return config


def run_hook(
    hook: Path,
    target: Path,
    work: Path,
    *,
    curtin_source: Path = STAND_IN,
    uefi: bool,
    machine: str,
    arch: str,
    config: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = 120,
) -> dict[str, Any]:
    """Run ``hook`` for ``target`` under ``curtin_source``; return the recording.

    The recording has ``returncode``, ``stdout``, ``stderr``, ``commands`` (each
    ``{"args": [...], "target": path or None}``) and ``curtin`` (what the child saw of curtin's
    distro tables after the hook: ``distro_names``, ``rpm_get_dist_id_patched``,
    ``find_efi_loader_patched``). ``python`` runs the child (real curtin needs python3-yaml,
    python3-attr and python3-apt, as in MAAS's ephemeral Ubuntu).
    """
    work.mkdir(parents=True, exist_ok=True)
    fstab = work / "fstab"
    fstab.write_text("UUID=1111-2222 / ext4 defaults 0 1\n")
    network = work / "network_config"
    network.write_text(json.dumps(MAAS_NETWORK_CONFIG, indent=2))  # curtin wants several lines
    config_file = work / "config"
    config_file.write_text(json.dumps(config or curtin_config(uefi)))
    record = work / "record.json"
    settings = {
        "hook": str(hook),
        "record": str(record),
        "uefi": uefi,
        "machine": machine,
        "arch": arch,
        "packages": IMAGE_PACKAGES[arch],
        "kernel": "5.10.0-216.0.0.115.oe2203sp4." + arch,
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(curtin_source), str(HERE.parent)]),
        "TARGET_MOUNT_POINT": str(target),
        "CONFIG": str(config_file),
        "WORKING_DIR": str(work),
        "OUTPUT_FSTAB": str(fstab),
        "OUTPUT_NETWORK_CONFIG": str(network),
        "OUTPUT_NETWORK_STATE": str(work / "network_state"),
        "OUTPUT_INTERFACES": str(work / "interfaces"),
        "CURTIN_REPORTSTACK": "cmd-install/stage-curthooks",
        "OEIB_HARNESS": json.dumps(settings),
        **(extra_env or {}),
    }
    completed = subprocess.run(
        [python, "-m", "curtin_harness.child"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result: dict[str, Any] = {"commands": [], "curtin": {}}
    if record.exists():
        result.update(json.loads(record.read_text()))
    result.update(
        returncode=completed.returncode, stdout=completed.stdout, stderr=completed.stderr
    )
    return result


def bootloader_commands(result: dict[str, Any]) -> list[list[str]]:
    """The boot-loader commands curtin ran in the target, in order."""
    names = ("grub2-install", "grub2-mkconfig", "efibootmgr", "grub-install")
    return [
        command["args"]
        for command in result["commands"]
        if command["args"]
        and os.path.basename(command["args"][0]) in names
        and command["args"] != ["efibootmgr", "-v"]
    ]
