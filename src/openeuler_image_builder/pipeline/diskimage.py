"""Read-only mounts of the partitions of a disk image (raw or qcow2).

Used by ``pack`` (the partition table comes from ``partitions``); nothing here writes to the
image, and every mount is undone. Two ways to mount a partition read-only:

- ``kernel`` (root with loop devices): ``mount -o ro,loop,offset=,sizelimit=`` on the raw image
  (libmount gives the loop device the autoclear flag, so unmounting releases it and a ``mount``
  killed half-way leaves no loop device). ext4 adds ``noload`` (a dirty journal is not replayed:
  the loop device is read-only), xfs ``norecovery,nouuid`` (same, and no clash with a mounted
  filesystem of the same UUID).
- ``fuse`` (no root, or no loop devices, e.g. in a container): ``fuse2fs -o ro`` on the
  partition; ext4 only (there is no FUSE driver for xfs in Debian/Ubuntu).

A qcow2 image is first exposed as a raw file with ``qemu-storage-daemon --export type=fuse``
(read-only; for the FUSE path the export covers just the partition). Every process started here
gets its own session so a Ctrl-C on the terminal reaches only the Python process, which then
takes things down in order: mounts, then exports, then the temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.processes import proc_stat
from openeuler_image_builder.pipeline.partitions import ImageFormat, Partition, detect_format

logger = logging.getLogger(__name__)

STEP = "pack"
MountMethod = Literal["kernel", "fuse"]

# Filesystems pack can mount and pack; others are recognised only to name them in messages.
SUPPORTED_FILESYSTEMS = ("ext4", "xfs")
HELPER_START_TIMEOUT = 30.0
# Session directories in the temporary directory: oeib-pack-<pid>-<random>.
SESSION_PREFIX = "oeib-pack-"
COMMAND_TIMEOUT = 120.0


def _unescape_mountinfo(text: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, index = [], 0
    while index < len(text):
        if text[index] == "\\" and text[index + 1 : index + 4].isdigit():
            out.append(chr(int(text[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount in this process's mount namespace."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as stream:
        for line in stream:
            fields = line.split()
            if len(fields) < 5:
                continue
            separator = fields.index("-") if "-" in fields else -1
            fstype = fields[separator + 1] if 0 < separator < len(fields) - 1 else ""
            found.append((_unescape_mountinfo(fields[4]), fstype))
    return found


def mount_points() -> set[str]:
    """Mount points in this process's mount namespace."""
    return {point for point, _ in mounts()}


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point."""
    return str(path) in mount_points()


def fuse2fs_options() -> set[str]:
    """The ``-o`` options this fuse2fs knows (``offset``, ``norecovery``, ``fakeroot``, ...)."""
    try:
        result = run_command(["fuse2fs", "--help"])
    except FileNotFoundError:
        return set()
    known = set()
    for line in (result.stdout + result.stderr).splitlines():
        stripped = line.strip()
        if stripped.startswith("-o "):
            known.add(stripped[3:].split()[0].split("=")[0])
    return known


def default_mount_method() -> MountMethod:
    """``kernel`` when running as root with loop devices, else ``fuse``."""
    if os.geteuid() == 0 and os.path.exists("/dev/loop-control"):
        return "kernel"
    return "fuse"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_sessions(directory: Path | None = None) -> list[Path]:
    """Undo what a pack killed with SIGKILL (or a power cut of its process) left behind.

    A session directory ``oeib-pack-<pid>-*`` in the temporary directory whose process is gone
    has its mounts taken down (FUSE with fusermount, which also ends the helper; loop mounts
    with umount, which frees the loop device) and is then removed. Directories of live
    processes are left alone. Returns the directories removed.
    """
    base = directory or Path(tempfile.gettempdir())
    removed = []
    for entry in sorted(base.glob(f"{SESSION_PREFIX}*")):
        match = re.match(rf"{SESSION_PREFIX}(\d+)-", entry.name)
        if not match or not entry.is_dir() or process_alive(int(match.group(1))):
            continue
        logger.warning("cleaning up after a pack that was killed: %s", entry)
        inside = [
            (Path(point), fstype) for point, fstype in mounts() if point.startswith(f"{entry}/")
        ]
        # Newest first (mountinfo lists mounts in the order they were made): the loop mount
        # of a partition before the FUSE export of the qcow2 image beneath it.
        for point, fstype in reversed(inside):
            if not fstype.startswith("fuse"):
                _try(_unmount, point)
        # The FUSE helpers (own sessions, so they outlived the pack): qemu-storage-daemon takes
        # its export down on SIGTERM; fuse2fs ends when unmounted.
        for pid in _processes_using(entry):
            _terminate(pid)
        for point, fstype in reversed(inside):
            if fstype.startswith("fuse") and is_mounted(point) and not _fusermount(point, False):
                _fusermount(point, lazy=True)
        if any(point.startswith(f"{entry}/") for point in mount_points()):
            logger.error("%s still has mounts; leaving it", entry)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _try(action: Callable[[Path], object], path: Path) -> None:
    try:
        action(path)
    except (OSError, subprocess.SubprocessError) as error:
        logger.error("cannot undo %s: %s", path, error)


def _processes_using(directory: Path) -> list[int]:
    """Processes whose command line names a path inside ``directory``."""
    needle = f"{directory}/".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in command:
            found.append(int(name))
    return found


def _running(pid: int) -> bool:
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


def _terminate(pid: int, timeout: float = 10) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it lingers."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        if not _running(pid):
            return
    logger.error("process %d did not stop", pid)


class DiskSession:
    """Read-only access to one disk image; everything it sets up is undone by ``close()``.

    Use as a context manager. ``raw_path`` is a raw view of the whole disk (the image itself,
    or a FUSE export of a qcow2 image); ``mount(partition, fstype)`` mounts a partition
    read-only under the session's private temporary directory (mode 0700).
    """

    def __init__(self, image: Path, *, method: MountMethod, image_format: ImageFormat) -> None:
        self.image = image
        self.method: MountMethod = method
        self.format: ImageFormat = image_format
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}{os.getpid()}-"))
        self._cleanups: list[tuple[str, object]] = []  # (kind, payload), undone in reverse
        self._counter = 0
        self.raw_path = image
        self.tools: dict[str, str] = {}

    def __enter__(self) -> DiskSession:
        try:
            if self.format == "qcow2":
                self.raw_path = self._export(self.image, self._new_path("disk.raw"))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- set-up ------------------------------------------------------------------------------

    def _new_path(self, name: str) -> Path:
        self._counter += 1
        return self.workdir / f"{self._counter}-{name}"

    def _log_file(self, name: str) -> Path:
        path = self._new_path(name + ".log")
        self._cleanups.append(("file", path))
        return path

    def _export(
        self, image: Path, target: Path, *, offset: int | None = None, size: int | None = None
    ) -> Path:
        """Expose (part of) a qcow2 image as a read-only raw file with qemu-storage-daemon."""
        qsd = shutil.which("qemu-storage-daemon")
        if qsd is None:
            raise StepFailed(
                STEP,
                "reading a qcow2 image needs qemu-storage-daemon (Debian/Ubuntu package "
                "qemu-system-common); install it, or convert the image to raw first",
            )
        target.touch(mode=0o600)
        self._cleanups.append(("file", target))
        node = "qcow2"
        command = [
            qsd,
            "--blockdev",
            f"driver=file,node-name=file,filename={_qemu_escape(str(image))},read-only=on",
            "--blockdev",
            "driver=qcow2,node-name=qcow2,file=file,read-only=on",
        ]
        if offset is not None and size is not None:
            command += [
                "--blockdev",
                f"driver=raw,node-name=part,file=qcow2,offset={offset},size={size},read-only=on",
            ]
            node = "part"
        command += [
            "--export",
            f"type=fuse,id=export,node-name={node},mountpoint={_qemu_escape(str(target))},"
            "writable=off",
        ]
        self._start_fuse_helper(command, target, "qemu-storage-daemon")
        self.tools.setdefault("qemu-storage-daemon", tool_version([qsd, "--version"]))
        return target

    def _start_fuse_helper(self, command: list[str], mountpoint: Path, name: str) -> None:
        log = self._log_file(name)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        # Registered before waiting: a signal during the wait still stops it and unmounts.
        self._cleanups.append(("fuse", (process, mountpoint, name)))
        deadline = time.monotonic() + HELPER_START_TIMEOUT
        while not is_mounted(mountpoint):
            if process.poll() is not None:
                raise StepFailed(
                    STEP,
                    f"{name} could not expose {self.image}: {_last_line(log)}",
                )
            if time.monotonic() > deadline:
                raise StepFailed(
                    STEP,
                    f"{name} did not mount {mountpoint} within {HELPER_START_TIMEOUT:.0f} s",
                )
            time.sleep(0.02)

    def mount(self, partition: Partition, fstype: str) -> Path:
        """Mount ``partition`` (of the raw view) read-only; returns the mount point."""
        mountpoint = self._new_path(f"p{partition.number}")
        mountpoint.mkdir(mode=0o700)
        self._cleanups.append(("dir", mountpoint))
        if self.method == "kernel":
            self._mount_kernel(partition, fstype, mountpoint)
        else:
            self._mount_fuse(partition, fstype, mountpoint)
        return mountpoint

    def _mount_kernel(self, partition: Partition, fstype: str, mountpoint: Path) -> None:
        options = [
            "ro",
            "nodev",
            "nosuid",
            "noexec",
            "loop",
            f"offset={partition.start}",
            f"sizelimit={partition.size}",
        ]
        if fstype == "ext4":
            options.append("noload")  # do not replay a dirty journal (the loop is read-only)
        elif fstype == "xfs":
            options += ["norecovery", "nouuid"]
        self._cleanups.append(("mount", mountpoint))
        result = run_command(
            ["mount", "-t", fstype, "-o", ",".join(options), str(self.raw_path), str(mountpoint)]
        )
        if result.returncode != 0:
            raise StepFailed(
                STEP,
                f"cannot mount partition {partition.number} ({fstype}) of {self.image}: "
                f"{one_line(result.stderr) or f'mount exited with {result.returncode}'}",
            )

    def _mount_fuse(self, partition: Partition, fstype: str, mountpoint: Path) -> None:
        if fstype != "ext4":
            raise UsageError(
                f"partition {partition.number} of {self.image} is {fstype}, which can only be "
                "mounted by the kernel: run pack as root (with loop devices), or use an ext4 "
                "root filesystem"
            )
        fuse2fs = shutil.which("fuse2fs")
        if fuse2fs is None:
            raise StepFailed(
                STEP, "mounting without root needs fuse2fs (Debian/Ubuntu package fuse2fs)"
            )
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise StepFailed(
                STEP,
                "mounting without root needs read-write access to /dev/fuse: "
                "run pack as root, or give this user access to /dev/fuse",
            )
        known = fuse2fs_options()
        options = ["ro"]
        if "norecovery" in known:
            options.append("norecovery")
        if os.geteuid() != 0 and "fakeroot" in known:
            options.append("fakeroot")  # read files only root may read (e.g. /etc/shadow)
        source = self.raw_path
        if partition.start:
            if self.format == "raw" and "offset" in known:
                options.append(f"offset={partition.start}")
            else:
                source = self._export(
                    self.image,
                    self._new_path(f"p{partition.number}.raw"),
                    offset=partition.start,
                    size=partition.size,
                )
        command = [fuse2fs, str(source), str(mountpoint), "-f", "-o", ",".join(options)]
        self._start_fuse_helper(command, mountpoint, "fuse2fs")
        self.tools.setdefault("fuse2fs", tool_version([fuse2fs, "-V"]))

    # -- tear-down ---------------------------------------------------------------------------

    def unmount(self, mountpoint: Path) -> None:
        """Unmount one mount made by ``mount()`` now (the rest waits for ``close()``)."""
        for index in range(len(self._cleanups) - 1, -1, -1):
            kind, payload = self._cleanups[index]
            matches = payload == mountpoint or (
                kind == "fuse" and isinstance(payload, tuple) and payload[1] == mountpoint
            )
            if matches and kind in ("mount", "fuse"):
                del self._cleanups[index]
                self._undo(kind, payload)

    def close(self) -> None:
        """Undo everything in reverse order.

        Failures are logged and the rest is still undone. A signal's exception (raised by a
        handler in the middle of a step) is held back: that step is tried once more, the rest
        is undone, and then the exception is raised again.
        """
        held: BaseException | None = None
        while self._cleanups:
            kind, payload = self._cleanups.pop()
            for _attempt in range(2):
                try:
                    self._undo(kind, payload)
                    break
                except Exception:
                    logger.exception("cleaning up %s %s failed", kind, payload)
                    break
                except BaseException as interruption:
                    held = held or interruption
        try:
            self.workdir.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.error("cannot remove %s: %s", self.workdir, error.strerror)
        if held is not None:
            raise held

    def _undo(self, kind: str, payload: object) -> None:
        if kind == "mount" and isinstance(payload, Path):
            _unmount(payload)
        elif kind == "fuse" and isinstance(payload, tuple):
            process, mountpoint, name = payload
            _stop_fuse_helper(process, mountpoint, name)
        elif kind == "dir" and isinstance(payload, Path):
            # rmdir, never rmtree: if an unmount failed, the image's files are below it.
            with contextlib.suppress(FileNotFoundError):
                payload.rmdir()
        elif kind == "file" and isinstance(payload, Path):
            if is_mounted(payload):
                logger.error("%s is still mounted; not removing it", payload)
                return
            payload.unlink(missing_ok=True)


def _unmount(mountpoint: Path) -> None:
    if not is_mounted(mountpoint):
        return
    for command in (["umount", str(mountpoint)], ["umount", "--lazy", str(mountpoint)]):
        result = run_command(command)
        if result.returncode == 0 or not is_mounted(mountpoint):
            return
        logger.warning("%s: %s", " ".join(command), one_line(result.stderr))
    raise OSError(errno.EBUSY, f"cannot unmount {mountpoint}")


def _fusermount(mountpoint: Path, lazy: bool) -> bool:
    for tool in ("fusermount3", "fusermount"):
        path = shutil.which(tool)
        if path is None:
            continue
        command = [path, "-u", *(["-z"] if lazy else []), str(mountpoint)]
        result = run_command(command)
        if result.returncode == 0:
            return True
        logger.debug("%s: %s", " ".join(command), one_line(result.stderr))
    if os.geteuid() == 0:
        command = ["umount", *(["--lazy"] if lazy else []), str(mountpoint)]
        result = run_command(command)
        return result.returncode == 0
    return False


def _stop_fuse_helper(process: subprocess.Popen[bytes], mountpoint: Path, name: str) -> None:
    """Unmount a FUSE mount and stop the process serving it."""
    if is_mounted(mountpoint) and not _fusermount(mountpoint, lazy=False):
        # Still busy: ask the helper to stop (qemu-storage-daemon unmounts on SIGTERM).
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if is_mounted(mountpoint):
            _fusermount(mountpoint, lazy=True)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop on SIGTERM; killing it", name)
        process.kill()
        process.wait(timeout=10)
    if is_mounted(mountpoint):
        raise OSError(errno.EBUSY, f"cannot unmount {mountpoint}")


def run_command(
    command: list[str], *, timeout: float = COMMAND_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a timeout, capturing its output as text."""
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )


def _qemu_escape(value: str) -> str:
    # QEMU option values: a comma is written as two commas.
    return value.replace(",", ",,")


def one_line(text: str) -> str:
    """The last non-blank line of a tool's output, stripped (``""`` when none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_line(path: Path) -> str:
    try:
        return one_line(path.read_text(errors="replace")) or "it exited without a message"
    except OSError:
        return "it exited without a message"


def tool_version(command: list[str]) -> str:
    """First version-looking word of a tool's ``--version`` output (``""`` if unknown)."""
    try:
        result = run_command(command)
    except (OSError, subprocess.SubprocessError):
        return ""
    for word in (result.stdout + " " + result.stderr).split():
        stripped = word.strip("(),;:")
        if stripped[:1].isdigit() and "." in stripped:
            return stripped
    return ""


@contextlib.contextmanager
def open_disk(image: Path, *, method: MountMethod) -> Iterator[DiskSession]:
    """A ``DiskSession`` for ``image`` (format detected from its first bytes)."""
    with DiskSession(image, method=method, image_format=detect_format(image)) as session:
        yield session
