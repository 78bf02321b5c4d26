"""Running ``packer build`` for one install, and following the installer on its serial console.

``PackerRun`` starts Packer in its own process group with a watchdog, turns the installer's
console output into ``install`` progress (``InstallerProgress``), and always stops Packer and
every process it started (QEMU included) when the run ends, fails, times out or is cancelled.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openeuler_image_builder import maas
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.processes import proc_stat, process_alive, start_time
from openeuler_image_builder.core.progress import Reporter

logger = logging.getLogger(__name__)

MIB = 1024**2
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")
PACKER_VERSION = re.compile(r"Packer v?(\d+\.\d+\.\d+)")
QEMU_VERSION = re.compile(r"QEMU emulator version (\d+\.\d+\.\d+)")
# What Packer's qemu builder prints when shutdown_timeout passes: "Failed to shutdown" on the
# communicator "none" path our template uses (step_shutdown.go of Packer 1.6 and of the qemu
# plugin up to 1.1.1), "Timeout while waiting ..." on the communicator path.
_PACKER_SHUTDOWN_TIMEOUTS = (
    "Timeout while waiting for machine to shut down",
    "Failed to shutdown",
)


def parse_duration(text: str) -> float:
    """Parse ``90m``, ``1h30m``, ``45s``, ``2h`` or plain seconds (``5400``) into seconds.

    Raises:
        UsageError: not a duration, or not positive.
    """
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
        if not value or match is None:
            raise UsageError(
                f"{text!r} is not a duration: use e.g. 90m, 1h30m, 2h or a number of seconds"
            )
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = float(hours * 3600 + minutes * 60 + secs)
    if seconds <= 0:
        raise UsageError(f"{text!r} is not a positive duration: use e.g. 90m or 2h")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``; ``45`` -> ``45s`` (also a valid Go duration for Packer)."""
    total = max(1, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    text += f"{secs}s" if secs or not text else ""
    return text


def tool_version(argv: list[str], pattern: re.Pattern[str], timeout: float) -> str | None:
    """The version a tool prints (``pattern``'s first group), or None."""
    try:
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = pattern.search(completed.stdout + completed.stderr)
    return match.group(1) if match else None


def detect_packer_version(packer: str, timeout: float = 30) -> str:
    """The version of ``packer`` (``packer version``), e.g. ``1.6.6``.

    Raises:
        UsageError: Packer is missing or does not answer like Packer.
    """
    if shutil.which(packer) is None:
        raise UsageError(
            f"Packer not found ({packer}): install Packer >= 1.11 with the qemu plugin "
            f"(HashiCorp's apt repository), or give its path with --packer"
        )
    version = tool_version([packer, "version"], PACKER_VERSION, timeout)
    if version is None:
        raise UsageError(f"{packer} did not report a Packer version: is it Packer?")
    return version


# ---------------------------------------------------------------------------------------------
# The installer's serial console


class InstallerProgress:
    """Follows the installer's serial log and turns it into ``install`` progress.

    Anaconda's text mode prints ``Installing <name>.<arch> (N/M)`` for each package of the
    transaction (``PayloadRPMDisplay`` in pyanaconda's DNF payload), then its post-install
    steps; the recipe's ``%post`` ends with ``OEIB-POST: ok`` or ``OEIB-POST: FAILED: <why>``
    (docs/recipe.md). Packages map to 5-90 %, the post-install steps to 90-99 %.
    """

    PACKAGE = re.compile(
        r"Installing (?P<name>\S+) \((?P<done>\d+)/(?P<total>\d+)\)"
        r"|[Pp]ackage (?P<done2>\d+) of (?P<total2>\d+)"
    )
    MILESTONES: tuple[tuple[str, float, str], ...] = (
        ("Starting package installation process", 5.0, "installing packages"),
        ("Performing post-installation setup tasks", 90.0, "post-installation setup"),
        ("Configuring installed system", 91.0, "configuring the installed system"),
        ("Running post-installation scripts", 93.0, "running %post"),
        ("OEIB-POST: ok", 98.0, "%post done, powering off"),
    )
    POST_FAILED = re.compile(r"OEIB-POST: FAILED: (?P<reason>.*)")

    def __init__(self, path: Path, progress: Reporter) -> None:
        self.path = path
        self.progress = progress
        self.percent = 0.0
        self.post_failure: str | None = None
        self.lines_seen = 0
        self._offset = 0
        self._pending = b""

    def poll(self) -> None:
        """Read what the installer wrote since the last call and report progress."""
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                data = stream.read(4 * MIB)
        except FileNotFoundError:
            return
        if not data:
            return
        self._offset += len(data)
        data = self._pending + data
        *complete, self._pending = data.replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            self.feed(raw.decode("utf-8", errors="replace"))

    def feed(self, line: str) -> None:
        """Interpret one line of console output."""
        line = _ANSI.sub("", line).strip()
        if not line:
            return
        self.lines_seen += 1
        failed = self.POST_FAILED.search(line)
        if failed:
            self.post_failure = failed.group("reason").strip() or "no reason given"
            return
        match = self.PACKAGE.search(line)
        if match:
            done = int(match.group("done") or match.group("done2"))
            total = int(match.group("total") or match.group("total2"))
            if total > 0:
                self._report(5.0 + 85.0 * min(done, total) / total, f"package {done} of {total}")
            return
        for marker, percent, detail in self.MILESTONES:
            if marker in line:
                self._report(percent, detail)
                return

    def _report(self, percent: float, detail: str) -> None:
        # Never go backwards (anaconda repeats some messages).
        if percent < self.percent:
            return
        self.percent = percent
        self.progress("install", round(percent, 1), detail)


# ---------------------------------------------------------------------------------------------
# Running Packer


def _process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (ppid, start time)`` of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        start = None if fields is None else start_time(fields)
        if fields is not None and start is not None and fields[1].isdigit():
            table[int(entry.name)] = (int(fields[1]), start)
    return table


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` as ``pid -> start time``."""
    table = _process_table()
    children: dict[int, list[int]] = collections.defaultdict(list)
    for child, (parent, _start) in table.items():
        children[parent].append(child)
    found: dict[int, int] = {}
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        if child in found:
            continue
        found[child] = table[child][1]
        stack.extend(children.get(child, []))
    return found


_PR_SET_PDEATHSIG = 1
_LIBC: Any = None


def _load_libc() -> Any:
    global _LIBC  # noqa: PLW0603 - loaded once, before any fork
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _terminate_with_parent() -> None:  # runs in the child between fork and exec
    # If this build process dies (even by SIGKILL), the kernel sends Packer SIGTERM, and Packer
    # stops QEMU and cleans up: no orphaned VM keeps running.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PackerRun:
    """One ``packer build``: started in its own process group, watched, and always stopped.

    Stopping sends SIGTERM to the whole group (Packer and QEMU), SIGKILL after
    ``stop_grace``, then SIGKILL to any descendant that left the group; afterwards no process
    started by Packer remains.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        serial: InstallerProgress,
        timeout: float,
        stop_grace: float = 30.0,
        watchdog_grace: float = 300.0,
        packer_log: Path,
        serial_log_copy: Path,
        output_log: Path | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = dict(env)
        self.serial = serial
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.watchdog_grace = watchdog_grace
        self.packer_log = packer_log
        self.serial_log_copy = serial_log_copy
        self.output_log = output_log or packer_log.with_name(packer_log.name + ".ui")
        self.tracked: dict[int, int] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def run(self) -> None:
        """Run Packer to the end.

        Raises:
            StepFailed: ("install") Packer failed, the install timed out, or ``%post`` failed.
        """
        _load_libc()
        # Packer's output goes to a file, not a pipe: if this process dies, Packer (told by
        # PR_SET_PDEATHSIG) must still be able to write while it stops QEMU; a Go program
        # writing to a broken stdout pipe is killed by SIGPIPE before it cleans up.
        with self.output_log.open("ab") as output:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,  # noqa: PLW1509 - only prctl, signal-safe
            )
        try:
            self._watch()
        finally:
            self.stop()
            self.serial.poll()
        self._check_result()

    def output_tail(self, lines: int = 200) -> list[str]:
        """The last lines Packer printed (colour codes removed)."""
        try:
            with self.output_log.open("rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - 64 * 1024))
                data = stream.read()
        except OSError:
            return []
        text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
        return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]

    def _watch(self) -> None:
        assert self.process is not None  # noqa: S101
        deadline = time.monotonic() + self.timeout + self.watchdog_grace
        while True:
            try:
                self.process.wait(timeout=0.5)
                return
            except subprocess.TimeoutExpired:
                pass
            self.tracked.update(descendants(self.process.pid))
            self.serial.poll()
            if self.serial.post_failure is not None:
                self.stop()
                raise StepFailed(
                    "install",
                    f"the kickstart's %post failed: {self.serial.post_failure}; "
                    f"see {self.serial_log_copy}",
                    self.packer_log,
                )
            if time.monotonic() > deadline:
                self.stop()
                raise StepFailed("install", self.timeout_message(), self.packer_log)

    def timeout_message(self) -> str:
        """The one line for an install that never finished."""
        return (
            f"install did not finish within {format_duration(self.timeout)}: the installer "
            f"never powered off; see {self.serial_log_copy}"
        )

    def stop(self) -> None:
        """Stop Packer and everything it started (idempotent)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.tracked.update(descendants(process.pid))
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                logger.warning("Packer ignored SIGTERM for %ss: killing it", self.stop_grace)
                self.tracked.update(descendants(process.pid))
                self._signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        # Packer is gone; its process group may still hold QEMU, and a child that changed its
        # group would have escaped the group signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._kill_tracked()

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _kill_tracked(self) -> None:
        survivors = [pid for pid, start in self.tracked.items() if process_alive(pid, start)]
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while survivors and time.monotonic() < deadline:
            survivors = [pid for pid in survivors if process_alive(pid, self.tracked[pid])]
            if survivors:
                time.sleep(0.05)
        if survivors:
            logger.error("processes started by Packer survived SIGKILL: %s", survivors)

    def _check_result(self) -> None:
        assert self.process is not None  # noqa: S101
        code = self.process.returncode
        if code == 0:
            return
        text = "\n".join(self.output_tail())
        if any(marker in text for marker in _PACKER_SHUTDOWN_TIMEOUTS):
            raise StepFailed("install", self.timeout_message(), self.packer_log)
        raise StepFailed("install", self.failure_reason(code), self.packer_log)

    def failure_reason(self, code: int) -> str:
        """The most telling line of Packer's output for a failed build."""
        lines = self.output_tail()
        for line in reversed(lines):
            match = re.search(r"Build '[^']*' errored(?: after [^:]*)?: (?P<why>.+)", line)
            if match:
                return f"packer build failed: {match.group('why').strip()}"
        for line in reversed(lines):
            stripped = line.lstrip("=> ").strip()
            if stripped.lower().startswith("error"):
                return f"packer build failed: {stripped}"
        if code < 0:
            return f"packer was killed by {signal.Signals(-code).name}"
        last = lines[-1] if lines else "no output"
        return f"packer build exited with {code}: {last}"


def packer_environment(
    layout: StateLayout,
    work: Path,
    packer_log: Path,
    environ: Mapping[str, str] | None = None,
    *,
    temporary: Path | None = None,
) -> dict[str, str]:
    """Packer's environment for one build.

    Detailed log to ``packer_log``, cache files in the work directory, temporary files (and
    Packer's plugin sockets) in ``temporary`` (default: the work directory's ``tmp``),
    checkpoint calls off, the plugin directory, and never the MAAS key.
    """
    env = dict(os.environ if environ is None else environ)
    for name in (maas.API_KEY_ENV, maas.API_KEY_FILE_ENV):
        env.pop(name, None)
    temporary = temporary or work / "tmp"
    cache = work / "packer_cache"
    temporary.mkdir(exist_ok=True)
    cache.mkdir(exist_ok=True)
    env.update(
        PACKER_LOG="1",
        PACKER_LOG_PATH=str(packer_log),
        CHECKPOINT_DISABLE="1",
        TMPDIR=str(temporary),
        PACKER_CACHE_DIR=str(cache),
        PACKER_NO_COLOR="1",
    )
    if not env.get("PACKER_PLUGIN_PATH"):
        plugins = layout.packer_plugins
        # Only when something is installed there: else Packer's default directory (where
        # `packer init` put the plugin for a standalone user) must stay visible.
        if plugins.is_dir() and any(plugins.iterdir()):
            env["PACKER_PLUGIN_PATH"] = str(plugins)
    env.setdefault("HOME", str(layout.root))
    return env
