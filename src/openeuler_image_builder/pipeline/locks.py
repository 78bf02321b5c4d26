"""One build per release and architecture at a time: an ``flock`` on a file under ``locks/``.

The lock file is ``<state>/locks/<release>-<arch>.lock``. Its holder writes who it is (pid, job
id, start time) into it, so a second caller can be told exactly what it is waiting for. The lock
is released by the kernel when the holder exits, however it exits (kill -9 included), so a
crashed build never leaves a stale lock behind. The file itself is never deleted: deleting an
flock'ed file lets two processes hold "the" lock on two different inodes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.timestamps import format_utc, utc_now


@dataclass(frozen=True)
class LockHolder:
    """Who holds a build lock (as written into the lock file by the holder)."""

    pid: int | None
    job_id: str | None
    started: str | None

    def describe(self) -> str:
        """``pid 1234, job build-...`` (only the parts that are known)."""
        parts = []
        if self.pid:
            parts.append(f"pid {self.pid}")
        if self.job_id:
            parts.append(f"job {self.job_id}")
        if self.started:
            parts.append(f"started {self.started}")
        return ", ".join(parts) or "holder unknown"


def try_flock(fd: int, operation: int) -> bool:
    """``flock(fd, operation | LOCK_NB)``; False (not raised) when someone else holds it."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return False
    return True


def build_lock_path(layout: StateLayout, release: str, arch: str) -> Path:
    """``<state>/locks/<release>-<arch>.lock``."""
    return layout.locks / f"{release}-{arch}.lock"


def _read_holder(fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return LockHolder(
        pid=pid if isinstance(pid, int) else None,
        job_id=data.get("job_id") if isinstance(data.get("job_id"), str) else None,
        started=data.get("started") if isinstance(data.get("started"), str) else None,
    )


def lock_holder(layout: StateLayout, release: str, arch: str) -> LockHolder | None:
    """The holder of the build lock of ``release`` x ``arch``, or None when it is free."""
    path = build_lock_path(layout, release, arch)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not try_flock(fd, fcntl.LOCK_SH):
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_refusal_message(release: str, arch: str, holder: LockHolder) -> str:
    """The one-line message for a caller that finds the build lock taken."""
    if holder.job_id:
        how = (
            f"wait for it to finish, or cancel it with "
            f"'openeuler-image-builder jobs cancel {holder.job_id}'"
        )
    elif holder.pid:
        how = f"wait for it to finish, or stop it (kill {holder.pid})"
    else:
        how = "wait for it to finish"
    return f"a build of {release} {arch} is already running ({holder.describe()}): {how}"


@contextlib.contextmanager
def build_lock(
    layout: StateLayout, release: str, arch: str, *, job_id: str | None = None
) -> Iterator[Path]:
    """Hold the build lock of ``release`` x ``arch`` for the duration of the block.

    Raises:
        UsageError: another process holds it; the message names its pid and job id.
    """
    path = build_lock_path(layout, release, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC: Packer, QEMU and every other child must not inherit (and so keep) the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not try_flock(fd, fcntl.LOCK_EX):
            raise UsageError(lock_refusal_message(release, arch, _read_holder(fd)))
        holder = {
            "pid": os.getpid(),
            "job_id": job_id,
            "started": format_utc(utc_now()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        try:
            yield path
        finally:
            # Forget the holder before letting go, so nobody reads a stale pid from a free lock.
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
