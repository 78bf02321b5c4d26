"""The ``tar | pigz`` pipeline writing a MAAS root tarball, and its temporary output file.

GNU tar (xattrs, ACLs, SELinux labels, sparse files, one filesystem, numeric owners, members
``./…``) piped into ``pigz`` on every core; this process reads the compressed stream once,
writing it to a temporary file beside the output while computing its sha256 and size. Both
tools run in their own sessions and are always stopped and reaped (``_Pipeline.stop``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import StepFailed
from openeuler_image_builder.core.progress import Reporter
from openeuler_image_builder.pipeline import diskimage

logger = logging.getLogger(__name__)

STEP = "pack"
READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
TAR_RECORD_SIZE = 20 * 512  # GNU tar's default blocking factor
CHECKPOINT_RECORDS = 1024  # a progress line from tar every 10 MiB
COMMAND_TIMEOUT = 300.0
_CHECKPOINT = re.compile(r"oeib-checkpoint (\d+)")


def tar_command(root: Path) -> list[str]:
    """GNU tar creating the MAAS root tarball of ``root`` on stdout (uncompressed)."""
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={root}",
        "--format=posix",
        # No access/change times in the pax headers: smaller and reproducible.
        "--pax-option=delete=atime,delete=ctime",
        "--numeric-owner",
        "--one-file-system",
        "--sparse",
        "--acls",
        "--selinux",
        "--xattrs",
        "--xattrs-include=*",
        # XFS also lists a file's ACLs as these raw attributes (root only); --acls carries the
        # ACLs, and copies of XFS's internal form would land as junk on an ext4 target.
        "--xattrs-exclude=trusted.SGI_ACL_FILE",
        "--xattrs-exclude=trusted.SGI_ACL_DEFAULT",
        "--sort=name",
        f"--checkpoint={CHECKPOINT_RECORDS}",
        "--checkpoint-action=echo=oeib-checkpoint %u",
        ".",
    ]


def compressor_command(threads: int | None = None) -> list[str]:
    """The compressor: pigz on every core this process may use (gzip level 6, the default)."""
    count = threads or len(os.sched_getaffinity(0))
    return ["pigz", "--processes", str(max(1, count)), "--stdout"]


def _widen_pipe(fd: int) -> None:
    """Grow a pipe to 1 MiB (from 64 KiB): fewer wake-ups of tar, pigz and this process."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _exit_text(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _stream(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise RuntimeError("a pipe was not set up")
    return stream


class _Pipeline:
    """``tar | pigz`` whose output this process reads; ``stop()`` ends both, always."""

    def __init__(self, root: Path, deadline: float) -> None:
        for tool, package in (("tar", "tar"), ("pigz", "pigz")):
            if shutil.which(tool) is None:
                raise StepFailed(STEP, f"{tool} is missing: install it (package {package})")
        self.records_written = 0
        self.tar_errors: collections.deque[str] = collections.deque(maxlen=20)
        self.pigz_errors: collections.deque[str] = collections.deque(maxlen=20)
        self.timed_out = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._time_out)
        self._timer.daemon = True
        try:
            self._start(root)
        except BaseException:
            # A failed start of pigz (or a signal) must not leave tar running in its session.
            self.stop()
            raise

    def _start(self, root: Path) -> None:
        environment = {**os.environ, "LC_ALL": "C"}
        # Own sessions: a Ctrl-C on the terminal reaches only Python, which stops these after
        # it stopped reading (never tar while a mount below it is being taken down).
        self.tar = subprocess.Popen(
            tar_command(root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=environment,
        )
        self.processes.append(self.tar)
        tar_stdout = _stream(self.tar.stdout)
        _widen_pipe(tar_stdout.fileno())
        self.pigz = subprocess.Popen(
            compressor_command(),
            stdin=tar_stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.processes.append(self.pigz)
        tar_stdout.close()  # pigz holds the read end now
        self.output = _stream(self.pigz.stdout)
        _widen_pipe(self.output.fileno())
        self._readers = [
            threading.Thread(
                target=self._read_stderr, args=(_stream(self.tar.stderr), True), daemon=True
            ),
            threading.Thread(
                target=self._read_stderr, args=(_stream(self.pigz.stderr), False), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()
        self._timer.start()

    def _read_stderr(self, stream: IO[bytes], is_tar: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            match = _CHECKPOINT.search(line) if is_tar else None
            if match:
                self.records_written = int(match.group(1))
            elif line:
                (self.tar_errors if is_tar else self.pigz_errors).append(line)

    def _time_out(self) -> None:
        self.timed_out = True
        self._kill()

    def _kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)

    def finish(self) -> None:
        """Wait for both after the stream ended; raise if either failed."""
        tar_status = self.tar.wait(timeout=COMMAND_TIMEOUT)
        pigz_status = self.pigz.wait(timeout=COMMAND_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=COMMAND_TIMEOUT)
        if self.timed_out:
            raise StepFailed(STEP, "tar | pigz did not finish before the pack timeout")
        # pigz first: when it dies, tar only sees a broken pipe.
        if pigz_status != 0:
            detail = self.pigz_errors[-1] if self.pigz_errors else _exit_text(pigz_status)
            raise StepFailed(STEP, f"pigz failed: {detail}")
        if tar_status != 0:
            detail = self.tar_errors[-1] if self.tar_errors else _exit_text(tar_status)
            raise StepFailed(STEP, f"tar failed: {detail}")
        for line in self.tar_errors:
            logger.info("tar: %s", line)

    def stop(self) -> None:
        """Kill and reap both processes if they still run (idempotent)."""
        self._timer.cancel()
        self._kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def write_tarball(
    root: Path, destination: int, progress: Reporter, deadline: float, stack: contextlib.ExitStack
) -> tuple[str, int]:
    """Run the pipeline into ``destination`` (a file descriptor); returns (sha256, size)."""
    usage = os.statvfs(root)
    used = max(1, (usage.f_blocks - usage.f_bfree) * usage.f_frsize)
    pipeline = _Pipeline(root, deadline)
    stack.callback(pipeline.stop)
    digest = hashlib.sha256()
    size = 0
    last_report = 0.0
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    source = pipeline.output.fileno()
    while True:
        count = os.readv(source, [view])
        if not count:
            break
        chunk = view[:count]
        written = 0
        while written < count:
            try:
                written += os.write(destination, chunk[written:])
            except OSError as error:
                raise StepFailed(
                    STEP, f"cannot write the tarball: {error.strerror or error}"
                ) from None
        digest.update(chunk)
        size += count
        now = time.monotonic()
        if now - last_report >= 0.5:
            last_report = now
            read = pipeline.records_written * TAR_RECORD_SIZE
            progress(
                STEP,
                min(99.0, 100 * read / used),
                f"{read / 2**20:.0f} MiB read, {size / 2**20:.0f} MiB written",
            )
    pipeline.finish()
    return digest.hexdigest(), size


def _remove_stale_partials(final: Path) -> None:
    """Remove temporary tarballs beside ``final`` left by packs that were killed."""
    for entry in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        match = re.fullmatch(rf"\.{re.escape(final.name)}\.(\d+)\..+\.partial", entry.name)
        if match and not diskimage.process_alive(int(match.group(1))):
            logger.warning("removing %s, left by a pack that was killed", entry)
            entry.unlink(missing_ok=True)


def temporary_output(final: Path) -> contextlib.AbstractContextManager[tuple[IO[bytes], Path]]:
    """A temporary file beside ``final`` (removed unless it was renamed into place).

    Named ``.<final name>.<pid>.<random>.partial`` so a later pack can tell a leftover of a
    killed process from a pack still running.
    """
    _remove_stale_partials(final)
    return files.staged_file(final, prefix=f".{final.name}.{os.getpid()}.", suffix=".partial")
