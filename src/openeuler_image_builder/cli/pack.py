"""``pack``: turn a disk image into a verified MAAS root tarball and its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openeuler_image_builder.cli import add_json_option, emit, target_arch
from openeuler_image_builder.core import cancellation, catalogue
from openeuler_image_builder.core.errors import Cancelled, UsageError
from openeuler_image_builder.core.image_names import manifest_path_for
from openeuler_image_builder.core.progress import TerminalBar
from openeuler_image_builder.pipeline import pack


def _partition_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number")
    return number


def register(subparsers: Any) -> None:
    """Register the ``pack`` subcommand."""
    parser = subparsers.add_parser(
        "pack",
        help="pack a disk image's root filesystem into a MAAS tarball",
        description=(
            "Mount the root partition of a raw or qcow2 disk image read-only, check it with "
            "the image verifier, and write OUT.tar.gz (tar with xattrs, ACLs and SELinux "
            "labels, gzip on every core) and OUT.manifest.json beside it. Nothing is written "
            "under those names unless the verifier found no problem and the tarball is complete."
        ),
    )
    parser.add_argument("disk_image", type=Path, metavar="DISK_IMAGE")
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="OUT.tar.gz",
        help="the tarball to write (the manifest goes beside it)",
    )
    parser.add_argument(
        "--root-partition",
        type=_partition_number,
        default=None,
        metavar="N",
        help="pack partition N (default: the one holding /etc/os-release)",
    )
    parser.add_argument(
        "--arch", default=None, help="the image's architecture (default: this machine's)"
    )
    parser.add_argument(
        "--release", default=None, help="record this release in the manifest (e.g. 24.03)"
    )
    parser.add_argument(
        "--mount-method",
        choices=("auto", "kernel", "fuse"),
        default="auto",
        help="kernel (loop device, root), fuse (fuse2fs, ext4 only) or auto (default)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Pack the image and print where the tarball and manifest are."""
    arch = target_arch(args)
    extra: dict[str, object] = {}
    if args.release:
        extra["release"] = catalogue.resolve(args.release).name
    if not args.disk_image.exists():
        raise UsageError(f"disk image {args.disk_image}: no such file")
    bar = TerminalBar()
    try:
        with cancellation.interrupt_on_signals():
            manifest = pack.pack_disk_image(
                args.disk_image,
                args.output,
                arch=arch,
                root_partition=args.root_partition,
                manifest_extra=extra,
                progress=bar,
                mount_method=args.mount_method,
            )
    except cancellation.Interrupted:
        raise Cancelled("pack") from None
    finally:
        bar.close()
    output = args.output.expanduser().absolute()
    manifest_path = manifest_path_for(output)
    data = {**manifest.to_json(), "tarball_path": str(output), "manifest_path": str(manifest_path)}
    text = (
        f"{output}\n"
        f"  manifest:   {manifest_path}\n"
        f"  sha256:     {manifest.sha256}\n"
        f"  size:       {manifest.size / 2**20:.1f} MiB ({manifest.size} bytes)\n"
        f"  kernel:     {manifest.kernel or 'unknown'}\n"
        f"  cloud-init: {manifest.cloud_init or 'unknown'}\n"
        f"  packages:   {len(manifest.packages)}"
    )
    emit(args, data, text)
    return 0
