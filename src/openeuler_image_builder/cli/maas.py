"""``upload``, ``maas-list`` and ``maas-delete``: register images in MAAS and manage them.

The MAAS connection comes from ``--maas-url`` / ``--api-key-file`` / ``--api-key`` or from
``MAAS_URL`` / ``MAAS_API_KEY_FILE`` / ``MAAS_API_KEY``. The key file must be readable by its
owner only. ``--api-key`` works but puts the key in the process list: prefer the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from openeuler_image_builder import maas
from openeuler_image_builder.cli import add_json_option, emit
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.progress import TerminalBar


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the MAAS connection options (reusable by other subcommands, e.g. build --upload)."""
    group = parser.add_argument_group("MAAS connection")
    group.add_argument(
        "--maas-url",
        metavar="URL",
        help=f"MAAS API URL, e.g. http://HOST:5240/MAAS (default: ${maas.MAAS_URL_ENV})",
    )
    group.add_argument(
        "--api-key-file",
        metavar="FILE",
        type=Path,
        help=f"file holding the admin API key, mode 0600 (default: ${maas.API_KEY_FILE_ENV})",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=(
            f"admin API key consumer:token:secret (default: ${maas.API_KEY_ENV}); visible to "
            "other users in the process list, prefer --api-key-file"
        ),
    )
    group.add_argument(
        "--maas-ca-cert",
        metavar="FILE",
        type=Path,
        help="PEM certificate of the CA that signed MAAS's TLS certificate (https URLs)",
    )


def client_from_args(args: argparse.Namespace) -> maas.MaasClient:
    """A ``MaasClient`` from the connection options, falling back to the environment.

    Raises:
        UsageError: no URL or no key, an unsafe key file, an unreadable CA certificate.
    """
    url, key = maas.connection_settings(
        url=args.maas_url, key=args.api_key, key_file=args.api_key_file
    )
    if not url:
        raise UsageError(
            f"no MAAS URL: pass --maas-url http://HOST:5240/MAAS or set {maas.MAAS_URL_ENV}"
        )
    if not key:
        raise UsageError(
            f"no MAAS API key: set {maas.API_KEY_FILE_ENV} to a file (mode 0600) holding it, "
            f"or {maas.API_KEY_ENV}, or pass --api-key-file FILE"
        )
    ca_certificate = None
    if args.maas_ca_cert:
        try:
            ca_certificate = args.maas_ca_cert.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(
                f"cannot read the CA certificate {args.maas_ca_cert}: {error}"
            ) from None
    return maas.MaasClient(url, key, ca_certificate=ca_certificate)


def register(subparsers: Any) -> None:
    """Register ``upload``, ``maas-list`` and ``maas-delete``."""
    upload = subparsers.add_parser(
        "upload",
        help="register an image tarball in MAAS (chunked, idempotent)",
        description=(
            "Upload IMAGE.tar.gz as a MAAS boot resource and wait until every region "
            "controller has it. Release and architecture come from the manifest beside the "
            "tarball, or from its name, unless given."
        ),
    )
    upload.add_argument("image", type=Path, metavar="IMAGE.tar.gz")
    upload.add_argument("--release", help="openEuler release (default: from the manifest)")
    upload.add_argument("--arch", help="x86_64 or aarch64 (default: from the manifest)")
    upload.add_argument("--name", help="MAAS name, custom/<x> or rhel/<x> (default: per scheme)")
    upload.add_argument("--title", help="title shown in MAAS (default: openEuler <release>)")
    upload.add_argument(
        "--name-scheme",
        choices=("custom", "rhel"),
        default="custom",
        help="custom/openeuler-<release> with base_image rhel/N (default), or rhel/...",
    )
    upload.add_argument(
        "--sync-timeout",
        type=float,
        default=1800,
        metavar="SECONDS",
        help="how long to wait for every region controller to hold the image (default 1800)",
    )
    add_json_option(upload)
    add_connection_options(upload)
    upload.set_defaults(func=run_upload)

    listing = subparsers.add_parser(
        "maas-list", help="list our images in MAAS with state, size and sha256"
    )
    add_json_option(listing)
    add_connection_options(listing)
    listing.set_defaults(func=run_list)

    delete = subparsers.add_parser("maas-delete", help="delete one of our images from MAAS")
    delete.add_argument("name", help="MAAS name (custom/<x>, <x> or rhel/<x>)")
    delete.add_argument("--arch", help="x86_64 or aarch64 (default: every architecture)")
    add_json_option(delete)
    add_connection_options(delete)
    delete.set_defaults(func=run_delete)


def _release_and_arch(args: argparse.Namespace) -> tuple[catalogue.Release, catalogue.Arch]:
    found_release, found_arch = maas.image_identity(args.image)
    release_text = args.release or found_release
    arch_text = args.arch or found_arch
    if not release_text:
        raise UsageError(
            f"cannot tell the openEuler release of {args.image.name} (no manifest beside it, "
            "and its name is not openeuler-<release>-<arch>.tar.gz): pass --release"
        )
    if not arch_text:
        raise UsageError(f"cannot tell the architecture of {args.image.name}: pass --arch")
    return catalogue.resolve(release_text), catalogue.resolve_arch(arch_text)


def run_upload(args: argparse.Namespace) -> int:
    """Upload one image."""
    if not args.image.is_file():
        raise UsageError(f"no image file {args.image}: give the path of a .tar.gz image")
    release, arch = _release_and_arch(args)
    bar = TerminalBar()
    try:
        with client_from_args(args) as client:
            result = maas.upload_image(
                client,
                args.image,
                release=release,
                arch=arch,
                scheme=args.name_scheme,
                name=args.name,
                title=args.title,
                progress=bar,
                sync_timeout=args.sync_timeout,
            )
    finally:
        bar.close()
    emit(args, result.to_json(), result.message)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List our images."""
    with client_from_args(args) as client:
        images = maas.list_images(client)
    rows = [f"{'name':<36} {'arch':<14} {'state':<16} {'MiB':>8}  {'sha256':<12}  set"]
    for image in images:
        state = image.state
        if image.progress is not None:
            state += f" {image.progress:.0f}%"
        size = f"{image.size / 2**20:.1f}" if image.size is not None else "-"
        rows.append(
            f"{image.name:<36} {image.architecture:<14} {state:<16} {size:>8}  "
            f"{(image.sha256 or '-')[:12]:<12}  {image.set_version or '-'}"
        )
    if not images:
        rows = ["no openEuler images in MAAS"]
    emit(args, [image.to_json() for image in images], "\n".join(rows))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """Delete one image, for one or every architecture."""
    arches: list[catalogue.Arch] = (
        [catalogue.resolve_arch(args.arch)] if args.arch else list(catalogue.ARCHES)
    )
    with client_from_args(args) as client:
        deleted: list[catalogue.Arch] = [
            arch for arch in arches if maas.delete_image(client, args.name, arch)
        ]
    if not deleted:
        where = catalogue.MAAS_ARCHITECTURE[arches[0]] if args.arch else "any architecture"
        raise UsageError(
            f"MAAS holds no uploaded image {maas.canonical_name(args.name)} for {where}: "
            "see maas-list for the names"
        )
    architectures = [catalogue.MAAS_ARCHITECTURE[arch] for arch in deleted]
    emit(
        args,
        {"name": maas.canonical_name(args.name), "deleted": architectures},
        f"deleted {maas.canonical_name(args.name)} ({', '.join(architectures)})",
    )
    return 0
