"""Turn a disk image into a MAAS root-filesystem tarball and its manifest (the ``pack`` stage).

disk image (raw or qcow2) → partition table (``partitions``) → root partition (the one holding
``/etc/os-release``, or ``--root-partition N``) → mounted read-only (``diskimage``) → facts for
the manifest (``manifest``: kernel, ``rpm -qa``, cloud-init) → ``verify.verify_tree`` (any
problem stops here) → ``tarball``: GNU tar piped into ``pigz`` on every core, read once by this
process into a temporary file beside the output while computing its sha256 and size →
``os.replace`` onto ``OUT.tar.gz`` and ``OUT.manifest.json``.

Nothing is written under the final names before verification passed and the tarball is complete;
a failure or a signal (SIGTERM/SIGINT) removes the temporary files, stops tar and pigz, unmounts
and detaches everything, and leaves a previous image untouched.

Layouts: the image must keep ``/boot`` inside the root filesystem (as the recipe's kickstart
does: one root partition). An ESP, a BIOS boot partition or swap beside it is ignored (MAAS and
curtin create those at deployment); a separate ``/boot`` partition is refused with a message,
since its kernel would be missing from the tarball.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from openeuler_image_builder import __version__
from openeuler_image_builder.core import cancellation, files
from openeuler_image_builder.core.catalogue import Arch
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.image_names import TARBALL_SUFFIX, manifest_path_for
from openeuler_image_builder.core.progress import Reporter, null_reporter
from openeuler_image_builder.core.timestamps import format_utc, utc_now
from openeuler_image_builder.pipeline import diskimage, partitions
from openeuler_image_builder.pipeline.manifest import (
    Manifest,
    cloud_init_from_source,
    has_os_release,
    kernel_version,
    read_rpmdb,
    temporary_manifest,
)
from openeuler_image_builder.pipeline.tarball import temporary_output, write_tarball
from openeuler_image_builder.pipeline.verify import Problem, resolve_in_root, verify_tree

logger = logging.getLogger(__name__)

STEP = "pack"
DEFAULT_TIMEOUT = 4 * 3600.0
MountChoice = Literal["auto", "kernel", "fuse"]


# -- choosing the root partition ---------------------------------------------------------------


def _describe(partition: partitions.Partition, fstype: str | None) -> str:
    role = {"esp": "EFI system", "bios-boot": "BIOS boot", "extended": "extended"}.get(
        partition.role, partition.role
    )
    details = [fstype or "no known filesystem"]
    if role not in ("data",):
        details.append(role)
    return f"{partition.number} ({', '.join(details)}, {partition.size // 2**20} MiB)"


def _looks_like_boot(path: Path) -> bool:
    """A filesystem holding what belongs in /boot at its top level."""
    return any(path.glob("vmlinuz-*")) or (path / "loader" / "entries").is_dir()


def _choose_root(
    session: diskimage.DiskSession,
    table: partitions.PartitionTable,
    wanted: int | None,
    progress: Reporter,
) -> tuple[partitions.Partition, str, Path]:
    """Pick, mount and return the root partition (see the module docstring)."""
    image = session.image
    fstypes = {
        p.number: partitions.probe_filesystem(session.raw_path, p) for p in table.partitions
    }
    listing = ", ".join(_describe(p, fstypes[p.number]) for p in table.partitions) or "none"
    if wanted is not None:
        partition = table.get(wanted)
        if partition is None:
            raise UsageError(
                f"--root-partition {wanted}: {image} has no partition {wanted} "
                f"(partitions: {listing})"
            )
        fstype = fstypes[wanted]
        if fstype not in diskimage.SUPPORTED_FILESYSTEMS:
            raise UsageError(
                f"--root-partition {wanted}: partition {_describe(partition, fstype)} of {image} "
                "is not an ext4 or xfs filesystem"
            )
        progress(STEP, None, f"mounting partition {wanted}")
        return partition, fstype, session.mount(partition, fstype)

    candidates = [
        p
        for p in table.partitions
        if p.role not in ("esp", "bios-boot", "swap", "extended")
        and fstypes[p.number] in diskimage.SUPPORTED_FILESYSTEMS
    ]
    if not candidates:
        unsupported = [
            _describe(p, fstypes[p.number])
            for p in table.partitions
            if fstypes[p.number] in ("btrfs", "LVM2_member", "crypto_LUKS", "linux_raid_member")
        ]
        hint = (
            f"; {', '.join(unsupported)} cannot be packed (the recipe's kickstart makes one ext4 "
            "root partition)"
            if unsupported
            else ""
        )
        raise UsageError(
            f"{image} has no ext4 or xfs partition to pack (partitions: {listing}){hint}"
        )
    mounted: dict[int, Path] = {}
    for partition in candidates:
        progress(STEP, None, f"looking at partition {partition.number}")
        mounted[partition.number] = session.mount(partition, str(fstypes[partition.number]))
    with_os_release = [p for p in candidates if has_os_release(mounted[p.number])]
    root = max(with_os_release or candidates, key=lambda p: p.size)
    if len(with_os_release) > 1:
        logger.warning(
            "several partitions of %s hold /etc/os-release (%s): packing the largest, %d; "
            "use --root-partition to choose",
            image,
            ", ".join(str(p.number) for p in with_os_release),
            root.number,
        )
    root_boot = resolve_in_root(mounted[root.number], "boot")
    root_has_kernel = bool(root_boot and any(root_boot.glob("vmlinuz-*")))
    for partition in candidates:
        if partition is root:
            continue
        if not root_has_kernel and _looks_like_boot(mounted[partition.number]):
            raise UsageError(
                f"{image} keeps /boot on partition {partition.number}, apart from the root "
                f"filesystem on partition {root.number}: pack needs /boot inside the root "
                "filesystem (curtin installs the kernel from the tarball); build with a single "
                "root partition, as the recipe's kickstart does"
            )
        session.unmount(mounted[partition.number])
    return root, str(fstypes[root.number]), mounted[root.number]


# -- the stage ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """SIGTERM/SIGINT unwind the pack (cleanup included), unless a caller handles them."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        with cancellation.interrupt_on_signals():
            yield
    else:
        yield


def _problems_text(problems: list[Problem]) -> str:
    listed = "; ".join(f"{p.message} [{p.code}]" for p in problems)
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"the image is not fit for MAAS ({count}): {listed}"


def _tool_versions(session: diskimage.DiskSession, rpm_version: str | None) -> dict[str, str]:
    versions = {
        "openeuler-image-builder": __version__,
        "tar": diskimage.tool_version(["tar", "--version"]),
        "pigz": diskimage.tool_version(["pigz", "--version"]),
    }
    if rpm_version:
        versions["rpm"] = rpm_version
    versions.update(session.tools)
    return {key: value for key, value in versions.items() if value}


def _check_output(output: Path) -> Path:
    if not output.name.endswith(TARBALL_SUFFIX):
        raise UsageError(
            f"--output {output}: the tarball name must end in .tar.gz (MAAS filetype tgz), "
            "e.g. openeuler-24.03-LTS-SP3-x86_64.tar.gz"
        )
    output = output.expanduser().absolute()
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory: give the tarball's file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the output directory {output.parent}: {error.strerror}"
        ) from None
    if not os.access(output.parent, os.W_OK):
        raise UsageError(f"cannot write to {output.parent}: choose another --output")
    return output


def pack_disk_image(
    disk_image: Path,
    output: Path,
    *,
    arch: Arch,
    root_partition: int | None = None,
    manifest_extra: Mapping[str, object] | None = None,
    progress: Reporter = null_reporter,
    mount_method: MountChoice = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> Manifest:
    """Pack the root filesystem of ``disk_image`` into ``output`` and write its manifest.

    ``manifest_extra`` sets what only the caller knows (``release``, ``durations`` — merged
    with pack's own —, ``build_duration``, ``tools`` — merged —, ``template_hash``,
    ``settings``, or other keys). ``mount_method`` ``auto`` mounts with the kernel when root
    with loop devices, else with FUSE.

    Raises:
        UsageError: bad input (missing or unsupported image, no root partition, separate /boot,
            bad ``--root-partition`` or ``--output``).
        StepFailed: ``verify`` when the tree has problems (all listed); ``pack`` when mounting,
            reading the rpm database, tar or pigz failed or ``timeout`` passed.
        cancellation.Interrupted: SIGTERM/SIGINT (after everything was cleaned up).
    """
    started = time.monotonic()
    deadline = started + timeout
    output = _check_output(output)
    manifest_path = manifest_path_for(output)
    extra = dict(manifest_extra or {})
    method: diskimage.MountMethod = (
        diskimage.default_mount_method() if mount_method == "auto" else mount_method
    )
    progress(STEP, None, f"opening {disk_image.name}")
    diskimage.clean_stale_sessions()
    with _cancellable(), contextlib.ExitStack() as stack:
        session = stack.enter_context(diskimage.open_disk(disk_image, method=method))
        table = partitions.read_partition_table(session.raw_path)
        partition, fstype, root = _choose_root(session, table, root_partition, progress)
        logger.info("packing partition %d (%s) of %s", partition.number, fstype, disk_image)

        progress(STEP, None, "reading the package database")
        stack.callback(shutil.rmtree, session.workdir / "rpmdb", ignore_errors=True)
        rpm = read_rpmdb(root, session.workdir)
        kernel = kernel_version(root)
        cloud_init = rpm.cloud_init or cloud_init_from_source(root)

        progress("verify", None, "checking the root filesystem")
        verify_started = time.monotonic()
        problems = verify_tree(root, arch)
        verify_duration = time.monotonic() - verify_started
        if problems:
            raise StepFailed("verify", _problems_text(problems))
        progress("verify", 100, "no problems")

        stream, temporary = stack.enter_context(temporary_output(output))
        sha256, size = write_tarball(root, stream.fileno(), progress, deadline, stack)
        files.finish(stream)

        durations = {
            "pack": round(time.monotonic() - started, 3),
            "verify": round(verify_duration, 3),
        }
        extra_durations = extra.pop("durations", None)
        extra_tools = extra.pop("tools", None)
        if not isinstance(extra_durations, Mapping):
            extra_durations = {}
        if not isinstance(extra_tools, Mapping):
            extra_tools = {}
        manifest = Manifest(
            image=output.name,
            arch=arch,
            sha256=sha256,
            size=size,
            kernel=kernel,
            packages=rpm.packages,
            cloud_init=cloud_init,
            built_at=format_utc(utc_now()),
            build_duration=durations["pack"],
            durations={**extra_durations, **durations},
            tools={**_tool_versions(session, rpm.rpm_version), **extra_tools},
        )
        protected = {"extra", "image", "sha256", "size", "schema"}  # facts of this tarball
        names = {f.name for f in dataclasses.fields(Manifest)} - protected
        for key, value in extra.items():
            if key in names:
                setattr(manifest, key, value)
            elif key not in protected:
                manifest.extra[key] = value
        # Both files are complete on disk before either final name changes, so the window in
        # which the new tarball sits beside the old manifest is two renames long.
        manifest_temporary = stack.enter_context(temporary_manifest(manifest, manifest_path))
        os.replace(temporary, output)
        os.replace(manifest_temporary, manifest_path)
        progress(STEP, 100, f"{output.name}: {size / 2**20:.0f} MiB")
    return manifest
