"""Boot-loader installation for redhat-family targets, per profile."""

import os

from curtin import PROFILE, distro, paths, util

AA64_NAMES = PROFILE not in ("21.3", "23.1.1")


def _rhel_supported(rhel_ver):
    if PROFILE == "21.3":
        return rhel_ver in ("7", "8")
    if PROFILE == "23.1.1":
        return rhel_ver in ("7", "8", "9")
    return str(rhel_ver).isdigit() and int(rhel_ver) > 6


def get_grub_package_name(target_arch, uefi, rhel_ver=None, osfamily=None):
    """(grub package, grub target) for the target."""
    if uefi:
        if target_arch == "x86_64":
            return "grub2-efi-x64", "x86_64-efi"
        if target_arch == "aarch64":
            return "grub2-efi-aa64", "arm64-efi"
        raise ValueError(f"Unsupported UEFI arch: {target_arch}")
    if target_arch != "x86_64":
        raise ValueError(f"Unsupported arch: {target_arch}")
    if not _rhel_supported(rhel_ver):
        raise ValueError(f"Unsupported RHEL version: {rhel_ver}")
    return "grub2-pc", "i386-pc"


def find_efi_loader(target, bootid):
    """The first boot loader present on the ESP, as a path below /boot/efi."""
    names = [(bootid, "shimx64.efi"), ("BOOT", "BOOTX64.EFI"), (bootid, "grubx64.efi")]
    if AA64_NAMES:
        names += [(bootid, "shimaa64.efi"), ("BOOT", "BOOTAA64.EFI"), (bootid, "grubaa64.efi")]
    for directory, name in names:
        loader = os.path.join("/boot/efi/EFI", directory, name)
        if os.path.exists(paths.target_path(target, loader)):
            return loader
    return None


def gen_uefi_install_commands(grub_target, devices, distroinfo, target):
    """Commands for a UEFI machine."""
    install, post = [["efibootmgr", "-v"]], []
    bootid = "redhat" if distroinfo.variant in ("rhel", "ol") else distroinfo.variant
    loader = find_efi_loader(target, bootid)
    if loader:
        disk, part = (
            devices[0].rstrip("0123456789"),
            devices[0][len(devices[0].rstrip("0123456789")) :],
        )
        install.append(
            [
                "efibootmgr",
                "--create",
                "--write-signature",
                "--label",
                bootid,
                "--disk",
                disk,
                "--part",
                part,
                "--loader",
                loader[len("/boot/efi") :],
            ]
        )
        post.append(["grub2-mkconfig", "-o", f"/boot/efi/EFI/{bootid}/grub.cfg"])
    else:
        install.append(
            [
                "grub2-install",
                f"--target={grub_target}",
                "--efi-directory=/boot/efi",
                f"--bootloader-id={bootid}",
                "--recheck",
            ]
        )
        post.append(["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"])
    post.append(["efibootmgr", "-v"])
    return install, post


def gen_install_commands(grub_name, grub_cmd, distroinfo, devices, rhel_ver=None):
    """Commands for a BIOS machine."""
    if not _rhel_supported(rhel_ver):
        raise ValueError(f'Unsupported "rhel_ver" value: {rhel_ver}')
    install = [[grub_cmd, device] for device in devices]
    return install, [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]


def install_grub(devices, target, uefi=None, grubcfg=None):
    """Install the boot loader of a redhat-family target."""
    info = distro.get_distroinfo(target=target)
    if info.family != "redhat":
        raise ValueError(f"stand-in only handles redhat: {info}")
    arch = distro.get_architecture(target=target)
    rhel_ver = distro.rpm_get_dist_id(target)
    grub_name, grub_target = get_grub_package_name(
        arch, uefi, rhel_ver=rhel_ver, osfamily=info.family
    )
    if uefi:
        install, post = gen_uefi_install_commands(grub_target, devices, info, target)
    else:
        install, post = gen_install_commands(grub_name, "grub2-install", info, devices, rhel_ver)
    with util.ChrootableTarget(target) as in_chroot:
        for command in install + post:
            in_chroot.subp(command, capture=True)
