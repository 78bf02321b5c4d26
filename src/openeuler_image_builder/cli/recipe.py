"""``render`` (the image recipe) and ``verify`` (an image's contents)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from openeuler_image_builder.backends.vm.packer import detect_packer_version
from openeuler_image_builder.cli import (
    EXIT_FAILED,
    EXIT_OK,
    add_json_option,
    add_target_options,
    emit,
    load_settings,
    target_arch,
)
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host.kvm import check_kvm
from openeuler_image_builder.pipeline import render, verify


def register(subparsers: Any) -> None:
    """Register the ``render`` and ``verify`` subcommands."""
    parser = subparsers.add_parser(
        "render",
        help="render the Packer template, kickstart and curtin hook for a release",
        description=(
            "Render the recipe of one release and architecture into a directory that "
            "`packer build .` builds on its own: openeuler.pkr.hcl (plus plugins.pkr.hcl for "
            "Packer >= 1.7), http/ks.cfg, curtin/curtin-hooks and the UEFI variable store. "
            "Defaults come from this host: KVM when /dev/kvm is usable for the architecture, "
            "the installed Packer's version, the installed UEFI firmware."
        ),
    )
    add_target_options(parser)
    parser.add_argument(
        "--output", required=True, type=Path, metavar="DIR", help="directory to render into"
    )
    parser.add_argument(
        "--iso",
        type=Path,
        default=None,
        metavar="PATH",
        help="local DVD ISO (default: Packer downloads it from the mirror)",
    )
    parser.add_argument(
        "--sha256", default=None, metavar="HEX", help="sha256 of --iso for Packer to check"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file of build settings (charm option names)",
    )
    parser.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help="openEuler mirror's tree root (overrides the settings)",
    )
    parser.add_argument(
        "--accelerator",
        choices=("kvm", "tcg"),
        default=None,
        help="default: kvm when /dev/kvm is usable for --arch, else tcg",
    )
    parser.add_argument(
        "--packer-version",
        default=None,
        metavar="VERSION",
        help="Packer that will build it (default: the one on PATH; none found "
        "means production Packer >= 1.11)",
    )
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="HTTP proxy for the kickstart's update repository",
    )
    parser.add_argument(
        "--shutdown-timeout",
        default="90m",
        metavar="DURATION",
        help="how long Packer waits for the install (default 90m)",
    )
    parser.add_argument(
        "--firmware-code",
        type=Path,
        default=None,
        metavar="PATH",
        help="UEFI code image (with --firmware-vars; default: detected)",
    )
    parser.add_argument(
        "--firmware-vars",
        type=Path,
        default=None,
        metavar="PATH",
        help="UEFI variable-store template (with --firmware-code)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run_render)

    parser = subparsers.add_parser(
        "verify",
        help="check an image tarball or unpacked root for what MAAS deployment needs",
        description=(
            "Check an image (.tar.gz) or an unpacked root directory: kernel and initramfs, "
            "curtin hook, cloud-init, shim/grub for the architecture, and no host identity "
            "(machine-id, SSH host keys, root password, fstab). Exit status 1 when a problem "
            "is found; every problem is listed."
        ),
    )
    parser.add_argument("image", type=Path, metavar="IMAGE.tar.gz|ROOT_DIR")
    parser.add_argument(
        "--arch",
        default=None,
        help="x86_64 or aarch64 (default: from the image's kernel, else this machine's)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run_verify)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.settings, {} if args.mirror is None else {"mirror_url": args.mirror})


def _firmware(args: argparse.Namespace) -> render.FirmwarePaths | None:
    if args.firmware_code is None and args.firmware_vars is None:
        return None
    if args.firmware_code is None or args.firmware_vars is None:
        raise UsageError("give --firmware-code and --firmware-vars together")
    return render.FirmwarePaths(code=args.firmware_code, vars=args.firmware_vars)


def default_accelerator(arch: catalogue.Arch) -> render.Accelerator:
    """KVM when ``/dev/kvm`` is usable and the guest has this host's architecture, else TCG."""
    if arch == catalogue.host_arch() and check_kvm().usable:
        return "kvm"
    return "tcg"


def default_packer_version() -> str | None:
    """The version of ``packer`` on PATH, or None (production layout) when there is none."""
    if shutil.which("packer") is None:
        return None
    return detect_packer_version("packer")


def run_render(args: argparse.Namespace) -> int:
    """Render the recipe and say where it is."""
    release = catalogue.resolve(args.release)
    arch = target_arch(args)
    if args.sha256 is not None and args.iso is None:
        raise UsageError("--sha256 applies to a local ISO: give it together with --iso PATH")
    recipe = render.render_recipe(
        release,
        arch,
        _settings(args),
        args.output,
        iso_path=args.iso,
        iso_sha256=args.sha256,
        accelerator=args.accelerator or default_accelerator(arch),
        packer_version=(
            args.packer_version if args.packer_version is not None else default_packer_version()
        ),
        firmware=_firmware(args),
        http_proxy=args.proxy,
        shutdown_timeout=args.shutdown_timeout,
    )
    data = {
        "release": release.name,
        "arch": arch,
        **{
            field: str(getattr(recipe, field))
            for field in (
                "directory",
                "packer_template",
                "kickstart",
                "curtin_hook",
                "disk_image",
                "serial_log",
            )
        },
        "template_hash": recipe.template_hash,
    }
    emit(
        args,
        data,
        f"rendered openEuler {release.name} {arch} into {recipe.directory}\n"
        f"build it with: cd {recipe.directory} && packer build .\n"
        f"disk image: {recipe.disk_image}\nserial log: {recipe.serial_log}",
    )
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Verify an image; exit 1 when it has problems."""
    path: Path = args.image
    requested = catalogue.resolve_arch(args.arch) if args.arch else None
    found, problems = verify.verify_image(path, requested)
    arch = found or catalogue.host_arch()
    if found is None:
        problems = verify.verify_image(path, arch)[1]
    data = {
        "image": str(path),
        "arch": arch,
        "ok": not problems,
        "problems": [{"code": p.code, "message": p.message} for p in problems],
    }
    lines = [f"{p.code}: {p.message}" for p in problems]
    emit(args, data, "\n".join(lines) if problems else f"{path}: no problems ({arch})")
    if problems:
        sys.stderr.write(f"error: verify failed: {len(problems)} problem(s) in {path}\n")
        return EXIT_FAILED
    return EXIT_OK
