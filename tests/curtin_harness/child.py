"""Child process of ``curtin_harness.run_hook``: patch host access, then run the hook."""
# curtin (stand-in or real) is on sys.path only in the child process.
# pyright: reportMissingImports=false

from __future__ import annotations

import atexit
import json
import os
import platform
import re
import runpy
import sys
from typing import Any

SETTINGS: dict[str, Any] = json.loads(os.environ["OEIB_HARNESS"])
COMMANDS: list[dict[str, Any]] = []
EFI_ENTRIES: list[tuple[str, str, str]] = [("0001", "UEFI PXEv4", "PciRoot(0x0)/Pci(0x3,0x0)")]
SEEN: dict[str, Any] = {}


def _efibootmgr_output() -> str:
    lines = ["BootCurrent: 0001", "Timeout: 0 seconds"]
    lines.append("BootOrder: " + ",".join(number for number, _, _ in EFI_ENTRIES))
    lines += [f"Boot{number}* {label}\t{path}" for number, label, path in EFI_ENTRIES]
    return "\n".join(lines) + "\n"


def _answer(args: list[str]) -> str:
    """What openEuler's tools print for the commands curtin runs."""
    name = os.path.basename(args[0]) if args else ""
    if name == "rpm" and args[1:3] == ["-E", "%_arch"]:
        return SETTINGS["arch"] + "\n"
    if name == "rpm" and args[1:3] == ["-E", "%rhel"]:
        return "%rhel\n"  # openEuler-rpm-config defines %openEuler, not %rhel
    if name == "rpm" and "-qa" in args:
        return "".join(f"ii {package} 1.0-1.oe2203sp4\n" for package in SETTINGS["packages"])
    if name == "rpm" and "kernel" in args:
        # curtin passes --queryformat without a newline
        return SETTINGS["kernel"] + ("" if "--queryformat" in args else "\n")
    if name == "cloud-init" and args[1:2] == ["features"]:
        return "NETWORK_CONFIG_V1\nNETWORK_CONFIG_V2\n"
    if name == "dpkg" and "--print-architecture" in args:
        return {"x86_64": "amd64", "aarch64": "arm64"}[SETTINGS["machine"]] + "\n"
    if name == "efibootmgr":
        if "--create" in args or "-c" in args:
            label = args[args.index("--label") + 1] if "--label" in args else "?"
            loader = args[args.index("--loader") + 1] if "--loader" in args else "?"
            number = f"{len(EFI_ENTRIES) + 1:04d}"
            EFI_ENTRIES.insert(0, (number, label, f"HD(1,GPT,x)/File({loader})"))
        return _efibootmgr_output()
    return ""


def _record(args: Any, target: Any) -> None:
    if isinstance(args, str):
        args = ["sh", "-c", args]
    COMMANDS.append({"args": [str(arg) for arg in args], "target": target})


def _write_record() -> None:
    with open(SETTINGS["record"], "w") as stream:
        json.dump({"commands": COMMANDS, "curtin": SEEN}, stream, indent=1)


def _install() -> None:
    from curtin import distro, util
    from curtin.commands import install_grub

    def subp(args: Any, *unused: Any, **kwargs: Any) -> tuple[Any, Any]:
        target = kwargs.get("target")
        if target in ("/", None):
            target = None
        _record(args, target)
        out = _answer(list(args) if not isinstance(args, str) else ["sh"])
        if kwargs.get("capture") or kwargs.get("combine_capture"):
            return (out, "")
        return (None, None)

    util.subp = subp
    util.do_mount = lambda *args, **kwargs: False
    if hasattr(util, "do_umount"):
        util.do_umount = lambda *args, **kwargs: None
    util.is_uefi_bootable = lambda: SETTINGS["uefi"]
    platform.machine = lambda: SETTINGS["machine"]
    try:
        from curtin import block

        block.get_devices_for_mp = lambda target: ["/dev/sda2"]

        def get_blockdev_for_partition(devpath: str, strict: bool = True) -> tuple[str, Any]:
            number = re.search(r"(\d+)$", devpath)
            return re.sub(r"\d+$", "", devpath), number.group(1) if number else None

        block.get_blockdev_for_partition = get_blockdev_for_partition
        block.get_dev_name_entry = lambda devpath: (os.path.basename(devpath), devpath)
    except ImportError:
        pass
    try:
        from curtin.commands import block_meta

        def get_path_to_storage_volume(volume: str, storage_config: Any) -> str:
            item = storage_config[volume]
            if item.get("type") == "partition":
                disk = storage_config[item["device"]]
                return disk["path"] + str(item["number"])
            return item["path"]

        block_meta.get_path_to_storage_volume = get_path_to_storage_volume
    except ImportError:
        pass
    originals = {
        "rpm_get_dist_id": distro.rpm_get_dist_id,
        "find_efi_loader": install_grub.find_efi_loader,
        "distro_names": list(distro.DISTRO_NAMES),
    }

    def snapshot() -> None:
        from curtin import distro as after_distro
        from curtin.commands import install_grub as after_grub

        SEEN["distro_names_before"] = originals["distro_names"]
        SEEN["distro_names"] = list(after_distro.DISTRO_NAMES)
        SEEN["rpm_get_dist_id_patched"] = (
            after_distro.rpm_get_dist_id is not originals["rpm_get_dist_id"]
        )
        SEEN["find_efi_loader_patched"] = (
            after_grub.find_efi_loader is not originals["find_efi_loader"]
        )
        _write_record()

    atexit.register(snapshot)


def main() -> None:
    _install()
    sys.argv = [SETTINGS["hook"]]
    runpy.run_path(SETTINGS["hook"], run_name="__main__")


if __name__ == "__main__":
    main()
