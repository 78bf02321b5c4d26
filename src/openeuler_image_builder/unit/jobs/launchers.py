"""Launchers: how a background job is started, watched and stopped.

``SystemdLauncher`` runs a job as a transient systemd unit (on charm units);
``ProcessLauncher`` runs it as a detached process in its own session (standalone use and tests).
Secrets never travel through a job's command line or environment values (``check_environment``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import Release
from openeuler_image_builder.core.errors import StepFailed
from openeuler_image_builder.core.processes import process_alive
from openeuler_image_builder.core.timestamps import parse_utc_or_none, utc_now
from openeuler_image_builder.maas import API_KEY_FILE_ENV
from openeuler_image_builder.unit.jobs.state import JobKind, JobState

logger = logging.getLogger(__name__)

# Environment names that must never be handed to a job (they would end up in systemd-run's
# argv and the unit's properties, readable by any user): the key goes by file only.
_SECRET_NAME = re.compile(r"(API_KEY$|SECRET|TOKEN|PASSWORD|PASSWD)", re.IGNORECASE)
_ALIVE_UNIT_STATES = {"active", "activating", "deactivating", "reloading", "refreshing"}
# A job whose launcher could not record a pid is considered dead after this long.
_PID_GRACE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """What a launcher starts: the job's argv, its unit name, log and environment."""

    argv: tuple[str, ...]
    unit: str
    log_path: Path
    working_directory: Path
    environment: Mapping[str, str]
    description: str
    environment_file: Path | None = None
    """Where a launcher that cannot pass the environment privately writes it (0600)."""


@dataclasses.dataclass(frozen=True)
class Launched:
    """What a launcher learnt when it started a job."""

    pid: int | None = None
    pid_start: int | None = None
    unit: str | None = None


class Launcher(Protocol):
    """Starts, watches and stops background jobs."""

    name: str

    def start(self, spec: LaunchSpec) -> Launched:
        """Start the job described by ``spec``."""
        ...

    def is_alive(self, job: JobState) -> bool | None:
        """Whether the job's process or unit still runs (None: cannot tell)."""
        ...

    def stop(self, job: JobState, timeout: float) -> None:
        """Ask the job to stop (SIGTERM), and kill it if it has not within ``timeout``."""
        ...


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output, with a timeout (the default ``Runner``)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def unit_name(kind: JobKind, release: Release | str, arch: str) -> str:
    """``openeuler-image-builder-<kind>-<release lowercased>-<arch>``."""
    name = release.slug if isinstance(release, Release) else release.lower()
    return f"openeuler-image-builder-{kind}-{name}-{arch}"


def check_environment(environment: Mapping[str, str]) -> None:
    """Refuse environment variables that look like secrets (they would be visible to all).

    Raises:
        ValueError: a name looks like a secret; the key must go through its file.
    """
    for name in environment:
        if _SECRET_NAME.search(name):
            raise ValueError(
                f"refusing to pass {name} to a background job: secrets reach jobs only "
                f"through a root-only file ({API_KEY_FILE_ENV} for the MAAS key)"
            )


class SystemdLauncher:
    """Runs a job as a transient systemd unit (``systemd-run``); used on charm units.

    The unit is named after kind, release and arch, is garbage-collected when it ends
    (``--collect``, also when it failed), appends its stdout and stderr to the job's log file,
    and is stopped as a whole control group: ``systemctl stop`` sends SIGTERM to the job, to
    Packer and to QEMU, and SIGKILL to whatever is left after ``TimeoutStopSec``.
    """

    name = "systemd"

    def __init__(
        self,
        *,
        runner: Runner = run_command,
        systemd_run: str = "systemd-run",
        systemctl: str = "systemctl",
        stop_timeout: int = 120,
        command_timeout: float = 60,
    ) -> None:
        self.runner = runner
        self.systemd_run = systemd_run
        self.systemctl = systemctl
        self.stop_timeout = stop_timeout
        self.command_timeout = command_timeout

    def command(self, spec: LaunchSpec) -> list[str]:
        """The exact ``systemd-run`` argv that starts ``spec``.

        The environment goes through ``spec.environment_file`` (written 0600 by ``start``),
        never ``--setenv``: a proxy URL may carry credentials, and argv is world-readable.
        """
        check_environment(spec.environment)
        argv = [
            self.systemd_run,
            f"--unit={spec.unit}",
            f"--description={spec.description}",
            "--collect",
            "--quiet",
            "--service-type=exec",
            f"--working-directory={spec.working_directory}",
            f"--property=StandardOutput=append:{spec.log_path}",
            f"--property=StandardError=append:{spec.log_path}",
            "--property=KillMode=control-group",
            f"--property=TimeoutStopSec={self.stop_timeout}s",
        ]
        if spec.environment:
            if spec.environment_file is None:
                raise ValueError("a job environment needs an environment file for systemd")
            argv.append(f"--property=EnvironmentFile={spec.environment_file}")
        argv += ["--", *spec.argv]
        return argv

    @staticmethod
    def environment_file_text(environment: Mapping[str, str]) -> str:
        """The ``EnvironmentFile=`` content for ``environment`` (values quoted for systemd)."""
        lines = []
        for key, value in sorted(environment.items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in value:
                raise ValueError(f"cannot pass {key!r} to a background job")
            quoted = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key}="{quoted}"')
        return "".join(line + "\n" for line in lines)

    def start(self, spec: LaunchSpec) -> Launched:
        """Start the unit.

        Raises:
            StepFailed: systemd-run failed (its message is included).
        """
        argv = self.command(spec)
        if spec.environment and spec.environment_file is not None:
            spec.environment_file.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(
                spec.environment_file,
                self.environment_file_text(spec.environment),
                mode=files.PRIVATE,
            )
        try:
            completed = self.runner(argv, self.command_timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StepFailed("start job", f"systemd-run failed: {error}") from None
        if completed.returncode != 0:
            message = (completed.stderr or completed.stdout or "").strip().splitlines()
            raise StepFailed(
                "start job",
                f"systemd-run exited with {completed.returncode}: "
                f"{message[-1] if message else 'no message'}",
            )
        return Launched(unit=spec.unit)

    def status_command(self, unit: str) -> list[str]:
        """The ``systemctl show`` argv used by ``is_alive``."""
        return [self.systemctl, "show", "--property=ActiveState,MainPID", unit]

    def is_alive(self, job: JobState) -> bool | None:
        """Whether the job's unit is active (and, when known, still runs the job's pid)."""
        if not job.unit:
            return False
        try:
            completed = self.runner(self.status_command(job.unit), self.command_timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.warning("cannot query unit %s: %s", job.unit, error)
            return None
        if completed.returncode != 0:
            logger.warning("cannot query unit %s: %s", job.unit, completed.stderr.strip())
            return None
        values = dict(line.split("=", 1) for line in completed.stdout.splitlines() if "=" in line)
        if values.get("ActiveState", "") not in _ALIVE_UNIT_STATES:
            return False
        main_pid = values.get("MainPID", "0")
        # The unit name is reused by the next job of the same release and arch.
        return not (job.pid and main_pid.isdigit() and int(main_pid) not in (0, job.pid))

    def stop_command(self, unit: str) -> list[str]:
        """The ``systemctl stop`` argv used by ``stop``."""
        return [self.systemctl, "stop", unit]

    def stop(self, job: JobState, timeout: float) -> None:
        """Stop the unit (systemd escalates to SIGKILL after ``TimeoutStopSec``)."""
        if not job.unit:
            return
        try:
            completed = self.runner(self.stop_command(job.unit), timeout + 10)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StepFailed("cancel", f"systemctl stop {job.unit} failed: {error}") from None
        if completed.returncode != 0:
            raise StepFailed(
                "cancel",
                f"systemctl stop {job.unit} exited with {completed.returncode}: "
                f"{completed.stderr.strip()}",
            )


class ProcessLauncher:
    """Runs a job as a detached process in its own session (standalone use and tests).

    The job's stdout and stderr are appended to its log file; it is re-parented to init, so
    it outlives the caller. Stopping sends SIGTERM to its process group, then SIGKILL.
    """

    name = "process"

    def __init__(self, *, python: str = sys.executable, start_timeout: float = 30) -> None:
        self.python = python
        self.start_timeout = start_timeout

    def command(self, spec: LaunchSpec) -> list[str]:
        """The argv of the short-lived intermediate that starts the job detached."""
        return [
            self.python,
            "-m",
            "openeuler_image_builder.core.processes",
            "--log",
            str(spec.log_path),
            "--cwd",
            str(spec.working_directory),
            "--",
            *spec.argv,
        ]

    def start(self, spec: LaunchSpec) -> Launched:
        """Start the job; returns its pid and start time.

        Raises:
            StepFailed: the job could not be started.
        """
        check_environment(spec.environment)
        environment = {
            key: value
            for key, value in os.environ.items()
            if not _SECRET_NAME.search(key) and key != API_KEY_FILE_ENV
        }
        environment.update(spec.environment)
        try:
            completed = subprocess.run(
                self.command(spec),
                env=environment,
                capture_output=True,
                text=True,
                timeout=self.start_timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StepFailed("start job", f"could not start the job: {error}") from None
        words = completed.stdout.split()
        if completed.returncode != 0 or len(words) != 2 or not words[0].isdigit():
            message = completed.stderr.strip().splitlines()
            raise StepFailed(
                "start job",
                f"could not start the job: {message[-1] if message else 'no output'}",
            )
        pid, start = int(words[0]), int(words[1])
        return Launched(pid=pid, pid_start=start or None)

    def is_alive(self, job: JobState) -> bool | None:
        """Whether the job's process still runs."""
        if job.pid is None:
            started = parse_utc_or_none(job.started)
            young = started is not None and (
                (utc_now() - started).total_seconds() < _PID_GRACE_SECONDS
            )
            return young
        return process_alive(job.pid, job.pid_start)

    def stop(self, job: JobState, timeout: float) -> None:
        """SIGTERM the job's process group; SIGKILL it if still alive after ``timeout``."""
        if job.pid is None or not process_alive(job.pid, job.pid_start):
            return
        self._signal(job.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(job.pid, job.pid_start):
                return
            time.sleep(0.2)
        logger.warning("job %s did not stop within %ss: killing it", job.id, timeout)
        self._signal(job.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process_alive(job.pid, job.pid_start):
            time.sleep(0.1)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        # The job leads its own session, so its group id is its pid; fall back to the pid alone
        # if it somehow left its group.
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)


def launcher_for(job: JobState) -> Launcher:
    """A launcher able to watch and stop ``job`` (by the launcher that started it)."""
    return SystemdLauncher() if job.launcher == "systemd" else ProcessLauncher()
