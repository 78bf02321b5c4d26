"""Disk space: refuse a build before it starts when a filesystem cannot hold what it will write."""

from __future__ import annotations

import collections
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from openeuler_image_builder.core.errors import UsageError

GIB = 1024**3
MIB = 1024**2
# Rule of thumb for a DVD ISO not in the cache yet (openeuler-releases.md 3.4: 3 to 4.5 GiB).
ISO_SIZE_ESTIMATE = 4.5 * GIB
# A MAAS tarball is about 690 MB for a @core image on an 8 GiB disk (packer-and-images.md 7.2);
# half the disk size leaves room for extra packages and poorly compressible content.
TARBALL_FRACTION = 0.5
SPACE_MARGIN_FRACTION = 0.10
SPACE_MARGIN_BYTES = 512 * MIB


@dataclasses.dataclass(frozen=True)
class SpaceNeed:
    """Bytes one part of the build will need under ``path``."""

    what: str
    path: Path
    size: float


def human_bytes(size: float) -> str:
    """``1.5 GiB`` or ``300 MiB``."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(
    needs: list[SpaceNeed],
    *,
    free_space: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
) -> None:
    """Check that every filesystem has room for what the build will put on it (plus margin).

    Raises:
        UsageError: one line per short filesystem: what needs how much, what is free, how much
            is missing, and where.
    """
    by_device: dict[int, list[SpaceNeed]] = collections.defaultdict(list)
    anchor: dict[int, Path] = {}
    for need in needs:
        existing = _existing_ancestor(need.path)
        device = existing.stat().st_dev
        by_device[device].append(need)
        anchor.setdefault(device, existing)
    problems = []
    for device, device_needs in by_device.items():
        total = sum(need.size for need in device_needs)
        if total <= 0:
            continue
        required = total * (1 + SPACE_MARGIN_FRACTION) + SPACE_MARGIN_BYTES
        free = free_space(anchor[device])
        if free >= required:
            continue
        parts = " + ".join(f"{need.what} {human_bytes(need.size)}" for need in device_needs)
        places = ", ".join(sorted({str(need.path) for need in device_needs}))
        problems.append(
            f"not enough disk space for {places}: the build needs {human_bytes(required)} "
            f"({parts}, plus margin) but only {human_bytes(free)} is free there; free "
            f"{human_bytes(required - free)} more, or lower disk-size"
        )
    if problems:
        raise UsageError("; ".join(problems))
