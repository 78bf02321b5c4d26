"""Housekeeping of the state directory: old images, unconfigured ISOs, old job records.

Keeps the newest ``keep-images`` images per release x arch, drops cached ISOs of releases no
longer configured, and forgets old job records.

Nothing a build or an upload is using is ever removed. "Using" is known three ways, any one of
which protects: the image directory's in-use lock (held by every build and upload while they
work, see ``images.hold_image``), the running jobs' state files (their output directory and
image), and the per-release build locks (an ISO of a release being built).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from openeuler_image_builder import catalogue, images, jobs, locks
from openeuler_image_builder.paths import StateLayout

logger = logging.getLogger(__name__)

ISO_NAME = re.compile(r"^openEuler-(?P<release>.+)-(?P<arch>x86_64|aarch64)-dvd\.iso")
# A build directory without a finished image younger than this may be one whose build is
# just starting (created before its build lock was taken): leave it alone.
INCOMPLETE_GRACE_SECONDS = 600.0
KEEP_JOB_RECORDS = 50


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def paths_in_use(
    layout: StateLayout, *, launchers: Mapping[str, jobs.Launcher] | None = None
) -> set[Path]:
    """Image directories that running jobs are writing or reading."""
    used: set[Path] = set()
    for job in jobs.list_jobs(layout, launchers=launchers):
        if not job.running:
            continue
        if job.output_dir:
            used.add(_resolved(Path(job.output_dir)))
        if job.image:
            used.add(_resolved(Path(job.image).parent))
    return used


def _remove_tree(directory: Path) -> bool:
    try:
        shutil.rmtree(directory)
    except OSError as error:
        logger.warning("could not remove %s: %s", directory, error)
        return False
    return True


def prune_images(
    layout: StateLayout,
    keep: int,
    *,
    launchers: Mapping[str, jobs.Launcher] | None = None,
    now: float | None = None,
) -> list[Path]:
    """Remove old images and the leftovers of failed builds from the store.

    Keeps the newest ``keep`` finished images of each release x arch; returns the directories
    removed.

    Never removes a directory in use by a build or an upload.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    now = time.time() if now is None else now
    in_use = paths_in_use(layout, launchers=launchers)
    finished_seen: dict[tuple[str, str], int] = {}
    removed: list[Path] = []
    for release, arch, directory in list(images.build_dirs(layout)):
        finished = images.read_stored_image(directory, release, arch) is not None
        if finished:
            rank = finished_seen.get((release, arch), 0)
            finished_seen[(release, arch)] = rank + 1
            if rank < keep:
                continue
        if _resolved(directory) in in_use:
            logger.info("keeping %s: a running job uses it", directory)
            continue
        if not finished:
            try:
                age = now - directory.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < INCOMPLETE_GRACE_SECONDS:
                continue
            if locks.lock_holder(layout, release, arch) is not None:
                continue
        with images.try_exclusive(directory) as free:
            if not free:
                logger.info("keeping %s: in use", directory)
                continue
            if _remove_tree(directory):
                logger.info("removed %s image %s", "old" if finished else "unfinished", directory)
                removed.append(directory)
    return removed


def prune_iso_cache(
    layout: StateLayout,
    releases: Iterable[str],
    *,
    launchers: Mapping[str, jobs.Launcher] | None = None,
) -> list[Path]:
    """Remove cached ISOs (and the files beside them) of releases not in ``releases``.

    ``releases`` holds names or aliases; returns the files removed.

    An ISO of a release that is being built is kept.
    """
    configured = {release.name for release in catalogue.resolve_many(releases)}
    building = {job.release for job in jobs.list_jobs(layout, launchers=launchers) if job.running}
    removed: list[Path] = []
    if not layout.iso_cache.is_dir():
        return removed
    for path in sorted(layout.iso_cache.iterdir()):
        match = ISO_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        release = match.group("release")
        if release in configured or release in building:
            continue
        if any(locks.lock_holder(layout, release, arch) for arch in catalogue.ARCHES):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            logger.info("removed cached ISO file %s (release %s not configured)", path, release)
            removed.append(path)
    return removed


def prune_job_records(layout: StateLayout, keep: int = KEEP_JOB_RECORDS) -> list[Path]:
    """Remove the state files and logs of all but the newest ``keep`` finished jobs."""
    finished = [job for job in jobs.list_jobs(layout) if not job.running]
    removed: list[Path] = []
    for job in finished[keep:]:
        for path in (
            jobs.job_state_path(layout, job.id),
            Path(job.log_path) if job.log_path else None,
            layout.logs / f"{job.id}.packer.log",
            layout.logs / f"{job.id}.serial.log",
        ):
            if path is None:
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
                removed.append(path)
    return removed
