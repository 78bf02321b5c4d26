"""``setup-host``: install what builds need on a standalone machine, with the charm's own code.

The charm runs ``install.install`` on its units; this subcommand runs the same plan here, so the
README's standalone set-up and a charm unit end up with the same packages, Packer and plugin.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from openeuler_image_builder.cli import EXIT_OK, add_json_option, emit, load_settings
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.host.kvm import check_kvm


def register(subparsers: Any) -> None:
    """Register ``setup-host``."""
    parser = subparsers.add_parser(
        "setup-host",
        help="install QEMU, firmware, Packer and its qemu plugin (needs root)",
        description=(
            "Install the apt packages a build needs, Packer from HashiCorp's apt repository "
            "(key pinned by fingerprint) or an offline bundle, and the Packer qemu plugin, then "
            "check /dev/kvm. Idempotent. Proxies come from http_proxy/https_proxy/no_proxy."
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be done and change nothing"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="JSON settings (packer-version, qemu-plugin-version, ...) as the charm writes them",
    )
    parser.add_argument("--packer-version", help="Packer version (default: the settings')")
    parser.add_argument(
        "--qemu-plugin-version", help="qemu plugin version (default: the settings')"
    )
    parser.add_argument(
        "--packer-bundle",
        type=Path,
        metavar="ZIP",
        help="offline: a zip of packer_<v>_linux_<arch>.zip and packer_<v>_SHA256SUMS",
    )
    parser.add_argument(
        "--plugin-bundle",
        type=Path,
        metavar="ZIP",
        help=(
            "offline: a zip of packer-plugin-qemu_v<v>_x5.0_linux_<arch>.zip and "
            "packer-plugin-qemu_v<v>_SHA256SUMS"
        ),
    )
    parser.add_argument(
        "--plugin-only",
        action="store_true",
        help="only install the qemu plugin into this user's state directory (no root needed)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run_setup_host)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.packer_version:
        overrides["packer_version"] = args.packer_version
    if args.qemu_plugin_version:
        overrides["qemu_plugin_version"] = args.qemu_plugin_version
    return load_settings(args.settings, overrides)


def run_setup_host(args: argparse.Namespace) -> int:
    """Plan, then (unless ``--dry-run``) install; report the KVM check either way."""
    # Imported here: charmlibs-apt (and its tracing) is only worth loading for this command.
    from openeuler_image_builder.host import install  # noqa: PLC0415

    for bundle in (args.packer_bundle, args.plugin_bundle):
        if bundle is not None and not bundle.is_file():
            raise UsageError(f"{bundle} does not exist or is not a file")
    plan = install.plan_install(
        _settings(args),
        StateLayout(),
        packer_bundle=args.packer_bundle,
        plugin_bundle=args.plugin_bundle,
        skip_apt=args.plugin_only,
    )
    kvm = check_kvm()
    kvm_text = "KVM: usable" if kvm.usable else f"KVM: not usable ({kvm.reason})"
    if args.dry_run:
        emit(
            args,
            {"dry_run": True, "plan": plan.to_json(), "kvm": kvm.__dict__},
            "\n".join(["would ensure:", *(f"  {step}" for step in plan.describe()), kvm_text]),
        )
        return EXIT_OK
    if os.geteuid() != 0 and not args.plugin_only:
        raise UsageError(
            "setup-host installs packages: run it as root (sudo), or use --dry-run to see "
            "what it would do, or --plugin-only to install just the qemu plugin"
        )

    def report(phase: str, percent: float | None, detail: str = "") -> None:
        if not args.json:
            sys.stderr.write(f"{phase}: {detail}\n")

    result = install.install(plan, progress=report)
    emit(
        args,
        {"dry_run": False, "result": result.to_json(), "kvm": kvm.__dict__},
        f"Packer {result.packer_version} at {result.packer_path}, qemu plugin "
        f"{result.qemu_plugin_version} in {result.plugin_dir}"
        + ("" if result.changed else " (already set up)")
        + f"\n{kvm_text}",
    )
    return EXIT_OK
