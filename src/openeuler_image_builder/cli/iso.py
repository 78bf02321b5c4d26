"""``fetch-iso``: download (or reuse, or check a local copy of) a release's verified DVD ISO."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openeuler_image_builder.cli import add_json_option, add_target_options, emit, target_arch
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import TerminalBar
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import iso


def register(subparsers: Any) -> None:
    """Register the ``fetch-iso`` subcommand."""
    parser = subparsers.add_parser(
        "fetch-iso",
        help="download and verify a release's DVD ISO into the cache",
        description=(
            "Download the DVD ISO of an openEuler release from a mirror into the ISO cache, "
            "resuming an interrupted download and verifying it against the mirror's "
            ".sha256sum file; a verified cached ISO is reused without reading it again. "
            "With --iso, check a local ISO instead (against --sha256, or the mirror's checksum)."
        ),
    )
    add_target_options(parser)
    parser.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help=f"an openEuler mirror's tree root (default: {catalogue.DEFAULT_MIRROR})",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="ISO cache directory (default: iso/ under the state directory)",
    )
    parser.add_argument(
        "--iso", type=Path, default=None, metavar="PATH", help="verify this local ISO instead"
    )
    parser.add_argument(
        "--sha256",
        default=None,
        metavar="HEX",
        help="expected sha256 of --iso (else checked against the mirror's .sha256sum)",
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


def mirror_url(value: str | None) -> str:
    """The mirror from ``--mirror`` (validated like the mirror-url option), or the default.

    Raises:
        UsageError: not an http(s) URL.
    """
    if value is None:
        return Settings().mirror_url
    try:
        return Settings.from_mapping({"mirror_url": value}).mirror_url
    except UsageError:
        raise UsageError(
            f"--mirror {value!r} is not an http(s) URL: give an openEuler mirror's tree root, "
            f"e.g. {catalogue.DEFAULT_MIRROR}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Fetch or verify the ISO and print where it is."""
    release = catalogue.resolve(args.release)
    arch = target_arch(args)
    if args.sha256 is not None and args.iso is None:
        raise UsageError("--sha256 applies to a local ISO: give it together with --iso PATH")
    mirror = mirror_url(args.mirror)
    bar = TerminalBar()
    try:
        if args.iso is not None:
            info = iso.use_local_iso(
                args.iso, release, arch, sha256=args.sha256, mirror=mirror, progress=bar
            )
        else:
            cache = args.cache if args.cache is not None else StateLayout().iso_cache
            info = iso.fetch_iso(release, arch, mirror=mirror, cache_dir=cache, progress=bar)
    finally:
        bar.close()
    data = {
        "release": release.name,
        "arch": arch,
        "path": str(info.path),
        "sha256": info.sha256,
        "size": info.size,
    }
    text = (
        f"{release.iso_name(arch)} verified\n"
        f"  path:   {info.path}\n"
        f"  sha256: {info.sha256}\n"
        f"  size:   {info.size / 2**30:.2f} GiB ({info.size} bytes)"
    )
    emit(args, data, text)
    return 0
