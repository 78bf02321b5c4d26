"""``build``: the whole pipeline for one release and architecture (also what build jobs run)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from openeuler_image_builder import maas
from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.cli import (
    add_json_option,
    add_target_options,
    emit,
    load_settings,
    target_arch,
)
from openeuler_image_builder.cli.jobs import execute_job, log_reporter
from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import MultiReporter, Reporter, TerminalBar
from openeuler_image_builder.core.settings import Settings, resolve_accelerator
from openeuler_image_builder.host.kvm import check_kvm
from openeuler_image_builder.pipeline import build, images
from openeuler_image_builder.pipeline.upload import connect_maas
from openeuler_image_builder.unit import jobs, retention

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = "3h"


def register(subparsers: Any) -> None:
    """Register the ``build`` subcommand."""
    parser = subparsers.add_parser(
        "build",
        help="build a MAAS image of an openEuler release (ISO, Packer install, pack, upload)",
        description=(
            "Build openeuler-<release>-<arch>.tar.gz and its manifest: fetch and verify the "
            "DVD ISO, install it in a QEMU VM with Packer and the project's kickstart, pack "
            "the disk into a verified tarball, and optionally upload it to MAAS. Without "
            "--output the image goes to the image store under the state directory, where "
            "the newest keep-images images per release and arch are kept."
        ),
    )
    add_target_options(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--mirror", default=None, metavar="URL", help="openEuler mirror to fetch the ISO from"
    )
    source.add_argument("--iso", type=Path, default=None, metavar="PATH", help="a local DVD ISO")
    parser.add_argument("--sha256", default=None, metavar="HEX", help="expected sha256 of --iso")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory for the image (default: a new directory in the image store)",
    )
    parser.add_argument(
        "--accelerator",
        choices=("kvm", "tcg"),
        default=None,
        help="QEMU accelerator for the install VM (default: the settings' accelerator: KVM)",
    )
    parser.add_argument("--upload", action="store_true", help="upload the image to MAAS")
    parser.add_argument("--disk-size", default=None, help="disk of the install VM, e.g. 8G")
    parser.add_argument("--memory", default=None, help="memory of the install VM, e.g. 4G")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the install VM")
    parser.add_argument(
        "--extra-packages",
        default=None,
        metavar="PKGS",
        help="space- or comma-separated RPM packages to add to the image",
    )
    parser.add_argument(
        "--no-updates",
        action="store_true",
        help="install from the ISO only (no update repository)",
    )
    parser.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        help=f"time the install may take, e.g. 90m or 2h (default: {DEFAULT_TIMEOUT})",
    )
    parser.add_argument(
        "--name-scheme",
        choices=("custom", "rhel"),
        default=None,
        help="MAAS naming scheme for --upload (default: custom)",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file of settings (the charm's); the options above override it",
    )
    parser.add_argument("--maas-url", default=None, help="MAAS URL (default: $MAAS_URL)")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file holding the MAAS API key, mode 0600 (default: $MAAS_API_KEY, "
        "$MAAS_API_KEY_FILE)",
    )
    parser.add_argument(
        "--packer",
        default=os.environ.get(jobs.PACKER_ENV) or "packer",
        metavar="PATH",
        help=f"the packer executable (default: ${jobs.PACKER_ENV} or packer on PATH)",
    )
    parser.add_argument("--job-state", type=Path, default=None, help=argparse.SUPPRESS)
    add_json_option(parser)
    parser.set_defaults(func=run)


def build_settings(args: argparse.Namespace) -> Settings:
    """The settings file (if any) with the command-line options applied over it.

    Raises:
        UsageError: a bad file or option value, naming the option and the accepted form.
    """
    overrides: dict[str, Any] = {}
    if args.mirror is not None:
        overrides["mirror_url"] = args.mirror
    if args.disk_size is not None:
        overrides["disk_size"] = args.disk_size
    if args.memory is not None:
        overrides["build_memory"] = args.memory
    if args.cpus is not None:
        overrides["build_cpus"] = args.cpus
    if args.extra_packages is not None:
        overrides["extra_packages"] = args.extra_packages
    if args.no_updates:
        overrides["include_updates"] = False
    if args.name_scheme is not None:
        overrides["maas_name_scheme"] = args.name_scheme
    if args.maas_url is not None:
        overrides["maas_url"] = args.maas_url
    return load_settings(args.settings, overrides)


def build_request(
    args: argparse.Namespace, settings: Settings, layout: StateLayout
) -> build.BuildRequest:
    """The ``BuildRequest`` the options describe."""
    release = catalogue.resolve(args.release)
    arch = target_arch(args)
    if arch not in release.architectures:
        raise UsageError(
            f"openEuler {release.name} has no {arch} ISO: use --arch "
            f"{' or '.join(release.architectures)}"
        )
    if args.sha256 and args.iso is None:
        raise UsageError("--sha256 goes with --iso: give the local ISO it checks")
    accelerator = resolve_accelerator(args.accelerator or settings.accelerator, check_kvm().usable)
    if accelerator == "kvm" and arch != catalogue.host_arch():
        raise UsageError(
            f"KVM cannot run an {arch} guest on this {catalogue.host_arch()} machine: "
            f"use --accelerator tcg (slow), or build on an {arch} machine"
        )
    output = args.output or images.next_image_dir(layout, release.name, arch)
    return build.BuildRequest(
        release=release,
        arch=arch,
        settings=settings,
        output_dir=output.absolute(),
        iso=args.iso,
        iso_sha256=args.sha256,
        accelerator=accelerator,
        upload=args.upload,
        timeout=packer.parse_duration(args.timeout),
    )


def maas_client(args: argparse.Namespace, settings: Settings) -> maas.MaasClient | None:
    """The MAAS client for ``--upload`` (None without it).

    Raises:
        UsageError: no MAAS URL or no API key.
    """
    if not args.upload:
        return None
    return connect_maas(settings, url=args.maas_url, key_file=args.api_key_file)


def _summary(result: build.BuildResult) -> str:
    lines = [f"image: {result.image}", f"manifest: {result.manifest_path}"]
    if result.sha256:
        lines.append(f"sha256: {result.sha256}")
    if result.upload is not None:
        lines.append(result.upload.message)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Build one image in the foreground (or, with ``--job-state``, as a background job)."""
    layout = StateLayout()
    if args.job_state is not None:
        return _run_job(args, layout)
    settings = build_settings(args)
    request = build_request(args, settings, layout)
    client = maas_client(args, settings)
    bar = TerminalBar()
    try:
        result = build.build_image(
            request,
            layout=layout,
            progress=bar,
            maas_client=client,
            tools=build.BuildTools(packer=args.packer),
        )
    finally:
        bar.close()
        if client is not None:
            client.close()
        _prune_jobs(layout)
    retention.prune_after_build(layout, settings.keep_images, result.image.parent)
    emit(args, result.to_json(), _summary(result))
    return 0


def _prune_jobs(layout: StateLayout) -> None:
    # Each build leaves megabytes of logs under <state>/logs; keep the newest few.
    try:
        retention.prune_jobs(layout)
    except Exception as error:  # housekeeping must not fail the build
        logger.warning("removing old build logs failed: %s", error)


def _run_job(args: argparse.Namespace, layout: StateLayout) -> int:
    def work(state: jobs.JobState, reporter: Reporter) -> dict[str, Any]:
        settings = build_settings(args)
        if args.output is None:
            args.output = images.next_image_dir(layout, state.release, state.arch)
        request = build_request(args, settings, layout)
        jobs.update_job_state(
            args.job_state, lambda current: setattr(current, "output_dir", str(request.output_dir))
        )
        client = maas_client(args, settings)
        try:
            result = build.build_image(
                request,
                layout=layout,
                progress=reporter,
                job_id=state.id,
                maas_client=client,
                tools=build.BuildTools(packer=args.packer),
            )
        finally:
            if client is not None:
                client.close()
        retention.prune_after_build(layout, settings.keep_images, result.image.parent)
        sys.stdout.write(_summary(result) + "\n")
        return {
            "image": str(result.image),
            "sha256": result.sha256,
            "uploaded": result.upload is not None,
            "maas_name": result.upload.name if result.upload else None,
            "durations": result.durations,
        }

    return execute_job(args.job_state, work, MultiReporter(log_reporter()))
