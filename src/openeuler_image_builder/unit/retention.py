"""Housekeeping of the state directory: old images, unconfigured ISOs, old jobs' files.

Keeps the newest ``keep-images`` images per release x arch, drops cached ISOs of releases no
longer configured, and removes the state files and logs of old finished jobs.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.pipeline import images, locks
from openeuler_image_builder.unit import history, jobs

logger = logging.getLogger(__name__)

ISO_NAME = re.compile(r"^openEuler-(?P<release>.+)-(?P<arch>x86_64|aarch64)-dvd\.iso")
# A build directory without a finished image younger than this may be one whose build is
# just starting (created before its build lock was taken): leave it alone.
INCOMPLETE_GRACE_SECONDS = 600.0
# Finished jobs (state file, environment file, logs) kept per release x arch: the job log,
# Packer log and serial log of a build take megabytes each, and weekly rebuilds never stop.
KEEP_JOBS = 5
# The job's own log, Packer's log and its UI output (packer.PackerRun), the serial console copy.
LOG_SUFFIXES = (".log", ".packer.log", ".packer.log.ui", ".serial.log")
# Job ids and foreground build ids: ``<kind>-<release>-<arch>-<UTC stamp>[-N]``.
_ID_PATTERN = (
    r"(?P<kind>build|upload)-(?P<release>.+)-(?P<arch>x86_64|aarch64)-"
    r"(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?"
)
JOB_ID = re.compile(f"^{_ID_PATTERN}$")
# A log of a job (or foreground build): ``<id><one of LOG_SUFFIXES>``.
JOB_LOG_NAME = re.compile(
    f"^(?P<id>{_ID_PATTERN})(?:{'|'.join(re.escape(suffix) for suffix in LOG_SUFFIXES)})$"
)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def _listed(
    layout: StateLayout,
    jobs_listed: Sequence[jobs.JobState] | None,
    launchers: Mapping[str, jobs.Launcher] | None,
) -> list[jobs.JobState]:
    # The caller's ``jobs.list_jobs(layout)`` when it has one, else a fresh listing.
    if jobs_listed is not None:
        return list(jobs_listed)
    return jobs.list_jobs(layout, launchers=launchers)


def paths_in_use(listed: Iterable[jobs.JobState]) -> set[Path]:
    """Image directories that the running jobs among ``listed`` are writing or reading."""
    used: set[Path] = set()
    for job in listed:
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
    jobs_listed: Sequence[jobs.JobState] | None = None,
    launchers: Mapping[str, jobs.Launcher] | None = None,
    now: float | None = None,
) -> list[Path]:
    """Remove old images and the leftovers of failed builds from the store.

    Keeps the newest ``keep`` finished images of each release x arch; returns the directories
    removed. ``jobs_listed`` (``jobs.list_jobs(layout)`` when the caller has it) or a listing
    with ``launchers`` tells which directories running jobs use.

    Never removes a directory in use by a build or an upload.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    now = time.time() if now is None else now
    in_use = paths_in_use(_listed(layout, jobs_listed, launchers))
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


def prune_after_build(layout: StateLayout, keep: int, output_dir: Path) -> None:
    """Retention of the image store after a build stored an image in ``output_dir``.

    Nothing happens for an image built outside the store; a failure is logged, never raised:
    housekeeping must not fail a good build.
    """
    if not images.is_in_store(layout, output_dir):
        return
    try:
        prune_images(layout, keep)
    except Exception as error:
        logger.warning("retention after the build failed: %s", error)


def prune_after_config(
    layout: StateLayout,
    releases: Sequence[str],
    keep_images: int,
    *,
    launchers: Mapping[str, jobs.Launcher] | None = None,
) -> list[Path]:
    """What the charm removes when its config changes: ISOs and images no longer wanted.

    ISOs of releases not in ``releases`` go only when some are configured (without configured
    releases, cached ISOs serve ``build-image``); images beyond ``keep_images`` per release x
    arch go. Returns what was removed.
    """
    listed = jobs.list_jobs(layout, launchers=launchers)  # once for both prunes
    removed = prune_iso_cache(layout, releases, jobs_listed=listed) if releases else []
    return removed + prune_images(layout, keep_images, jobs_listed=listed)


def prune_iso_cache(
    layout: StateLayout,
    releases: Iterable[str],
    *,
    jobs_listed: Sequence[jobs.JobState] | None = None,
    launchers: Mapping[str, jobs.Launcher] | None = None,
) -> list[Path]:
    """Remove cached ISOs (and the files beside them) of releases not in ``releases``.

    ``releases`` holds names or aliases; returns the files removed. ``jobs_listed`` and
    ``launchers`` as in :func:`prune_images`.

    An ISO of a release that is being built is kept.
    """
    configured = {release.name for release in catalogue.resolve_many(releases)}
    building = {job.release for job in _listed(layout, jobs_listed, launchers) if job.running}
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


def _recorded_by_history(layout: StateLayout) -> Callable[[str], bool]:
    # Only a charm unit keeps a history; without one no job waits to be recorded.
    path = history.History.path_in(layout.root)
    if not path.exists():
        return lambda job_id: True
    return history.History.load(path).is_recorded


def _job_files(layout: StateLayout, job_id: str) -> list[Path]:
    # The state file first: a prune cut short leaves logs without a job, pruned next time.
    state = jobs.job_state_path(layout, job_id)
    return [
        state,
        state.with_suffix(".env"),
        *(layout.logs / f"{job_id}{suffix}" for suffix in LOG_SUFFIXES),
    ]


def _orphan_log_ids(layout: StateLayout) -> dict[str, tuple[str, str]]:
    # Logs of foreground builds (``build`` without a job) and of jobs whose state file is gone:
    # id -> (release, arch), parsed from the file name. A job started meanwhile has its state
    # file before its log, so its log is never taken for an orphan.
    found: dict[str, tuple[str, str]] = {}
    if not layout.logs.is_dir():
        return found
    for path in layout.logs.iterdir():
        match = JOB_LOG_NAME.match(path.name)
        if match is None or match.group("id") in found or not path.is_file():
            continue
        if not jobs.job_state_path(layout, match.group("id")).exists():
            found[match.group("id")] = (match.group("release"), match.group("arch"))
    return found


def prune_jobs(
    layout: StateLayout,
    keep: int = KEEP_JOBS,
    *,
    recorded: Callable[[str], bool] | None = None,
    jobs_listed: Sequence[jobs.JobState] | None = None,
    launchers: Mapping[str, jobs.Launcher] | None = None,
) -> list[Path]:
    """Remove the files of old finished jobs: state file, ``.env`` file and logs.

    Keeps the newest ``keep`` finished jobs of each release x arch, every running job and every
    job the history has not recorded yet (it would never learn how the job ended). Logs left
    without a job (foreground ``build`` runs: ``<build id>.packer.log``/``.serial.log``) are
    kept the same way, ``keep`` per release x arch, and never while that release x arch's build
    lock is held. Returns the files removed.

    Args:
        layout: the state directory.
        keep: finished jobs kept per release x arch (at least 1).
        recorded: whether the history recorded a job id; None reads the history file of
            ``layout`` (without one, e.g. standalone, every finished job counts as recorded).
        jobs_listed: ``jobs.list_jobs(layout)`` when the caller has it.
        launchers: for ``jobs.list_jobs`` when ``jobs_listed`` is not given.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    listed = _listed(layout, jobs_listed, launchers)
    is_recorded = recorded or _recorded_by_history(layout)
    doomed: list[Path] = []
    seen: dict[tuple[str, str], int] = {}
    for job in sorted(listed, key=lambda j: (j.started, j.id), reverse=True):
        if job.running:
            continue
        rank = seen.get((job.release, job.arch), 0)
        seen[(job.release, job.arch)] = rank + 1
        if rank >= keep and is_recorded(job.id):
            doomed += _job_files(layout, job.id)
    orphans = _orphan_log_ids(layout)
    by_target: dict[tuple[str, str], list[str]] = {}
    for log_id, target in orphans.items():
        by_target.setdefault(target, []).append(log_id)
    for (release, arch), ids in by_target.items():
        if locks.lock_holder(layout, release, arch) is not None:
            continue
        for log_id in sorted(ids, key=_id_order, reverse=True)[keep:]:
            doomed += [layout.logs / f"{log_id}{suffix}" for suffix in LOG_SUFFIXES]
    removed: list[Path] = []
    for path in doomed:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
            removed.append(path)
    if removed:
        logger.info("removed %d files of old jobs", len(removed))
    return removed


def _id_order(log_id: str) -> tuple[str, str]:
    # Newest first by the UTC stamp in the id, then by the id (its "-N" suffix).
    match = JOB_ID.match(log_id)
    return (match.group("stamp") if match else "", log_id)
