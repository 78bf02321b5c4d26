"""curtin's built-in hooks, reduced to the redhat path the in-image hook drives."""

import os
import shutil

from curtin import PROFILE, distro, paths, util
from curtin.commands import install_grub as grub


def _grub_devices(cfg, uefi):
    items = {item["id"]: item for item in cfg.get("storage", {}).get("config", [])}
    devices = []
    for item in items.values():
        if item.get("type") == "partition" and uefi and item.get("flag") == "boot":
            devices.append(items[item["device"]]["path"] + str(item["number"]))
        elif item.get("type") == "disk" and not uefi and item.get("grub_device"):
            devices.append(item["path"])
    return devices


def builtin_curthooks(cfg, target, state):
    """Configure the installed target: packages, network, fstab, initramfs, boot loader."""
    info = distro.get_distroinfo(target=target)
    if info.family != "redhat":
        raise RuntimeError(f"stand-in only handles the redhat family, got {info}")
    installed = distro.get_installed_packages(target)
    if "dracut" not in installed:
        raise RuntimeError("dracut missing")
    crash = cfg.get("kernel-crash-dumps", {})
    if crash.get("enabled") is True:
        with util.ChrootableTarget(target) as in_chroot:
            in_chroot.subp(["dnf", "install", "-y", "kdump-tools"], capture=True)
        raise util.ProcessExecutionError("No match for argument: kdump-tools")
    network = state.get("network_config")
    if network and os.path.exists(network):
        with util.ChrootableTarget(target) as in_chroot:
            in_chroot.subp(["cloud-init", "features"], capture=True)
        shutil.copy(
            network, paths.target_path(target, "etc/cloud/cloud.cfg.d/50-curtin-networking.cfg")
        )
    if state.get("fstab"):
        shutil.copy(state["fstab"], paths.target_path(target, "etc/fstab"))
    with util.ChrootableTarget(target) as in_chroot:
        kernel, _ = in_chroot.subp(
            ["rpm", "-q", "--queryformat", "%{VERSION}", "kernel"], capture=True
        )
        in_chroot.subp(["dracut", "-f", f"/boot/initramfs-{kernel}.img", kernel])
    if PROFILE == "rewrites-os-release":
        with open(paths.target_path(target, "etc/os-release"), "a") as stream:
            stream.write('ID_LIKE="rhel"\n')
    uefi = util.is_uefi_bootable()
    grub.install_grub(_grub_devices(cfg, uefi), target, uefi=uefi, grubcfg=cfg.get("grub", {}))
