"""Background jobs: builds and uploads that run outside any Juju hook.

A job is the CLI (``python -m openeuler_image_builder build ... --job-state FILE``, or ``jobs
run-upload``) started by a ``Launcher``: ``SystemdLauncher`` (a transient systemd unit, used on
charm units) or ``ProcessLauncher`` (a detached process in its own session, for standalone use
and tests). Each job has a JSON state file ``<state>/jobs/<id>.json`` that the job itself
rewrites atomically at each phase change and at most every few seconds otherwise; the charm
reads it for its status. When a job ends it dispatches a custom event to the charm
(``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/build-finished ./dispatch``); outside Juju that is a
no-op. A "running" job whose process or unit has gone is reported failed, with its log's tail.

Secrets never travel through a job's command line or environment values: the MAAS API key
reaches a job only as the path of the root-only key file (``MAAS_API_KEY_FILE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from openeuler_image_builder.core import files
from openeuler_image_builder.core.catalogue import Arch, Release
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import STATE_DIR_ENV, StateLayout
from openeuler_image_builder.core.processes import proc_stat, process_start_time, start_time
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.core.timestamps import format_utc, parse_utc_or_none, utc_now
from openeuler_image_builder.maas import API_KEY_FILE_ENV
from openeuler_image_builder.pipeline import images, locks

logger = logging.getLogger(__name__)

JobKind = Literal["build", "upload"]
JobResult = Literal["running", "succeeded", "failed", "cancelled"]

PACKER_ENV = "OPENEULER_IMAGE_BUILDER_PACKER"
# Environment names that must never be handed to a job (they would end up in systemd-run's
# argv and the unit's properties, readable by any user): the key goes by file only.
_SECRET_NAME = re.compile(r"(API_KEY$|SECRET|TOKEN|PASSWORD|PASSWD)", re.IGNORECASE)
_ALIVE_UNIT_STATES = {"active", "activating", "deactivating", "reloading", "refreshing"}
# A job whose launcher could not record a pid is considered dead after this long.
_PID_GRACE_SECONDS = 60.0
_STATE_LOCK = ".state.lock"
_START_LOCK = ".start.lock"


def iso_time(moment: datetime.datetime | None = None) -> str:
    """``2026-11-27T07:05:12Z`` (now, or ``moment``)."""
    return format_utc(moment or utc_now())


@dataclasses.dataclass
class JobState:
    """The state of one background job, as stored in ``<state>/jobs/<id>.json``."""

    id: str
    kind: JobKind
    release: str
    arch: str
    phase: str = "starting"
    percent: float | None = None
    started: str = ""
    finished: str | None = None
    result: JobResult = "running"
    error: str | None = None
    log_path: str = ""
    image: str | None = None
    sha256: str | None = None
    uploaded: bool = False
    upload_requested: bool = False
    launcher: str = "process"
    unit: str | None = None
    pid: int | None = None
    # Beyond the documented minimum:
    detail: str = ""
    """What the phase is doing right now ("package 120 of 412")."""
    updated: str | None = None
    """When the job last wrote this file."""
    pid_start: int | None = None
    """Start time of ``pid`` (clock ticks since boot): tells a reused pid from the job's."""
    output_dir: str | None = None
    """The build's output directory (protected from retention while the job runs)."""
    maas_name: str | None = None
    log_tail: list[str] = dataclasses.field(default_factory=list)
    """Last lines of the log, filled in when the job failed or died."""
    dispatch_unit: str | None = None
    dispatch_charm_dir: str | None = None
    dispatch_event: str | None = None
    durations: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Whether the job has not ended (as far as its state file says)."""
        return self.result == "running"

    def elapsed(self, now: datetime.datetime | None = None) -> float | None:
        """Seconds from start to finish (or to now while running)."""
        started = parse_utc_or_none(self.started)
        if started is None:
            return None
        end = parse_utc_or_none(self.finished) or now or utc_now()
        return max(0.0, (end - started).total_seconds())

    def dispatch_target(self) -> DispatchTarget | None:
        """Where to dispatch the finished event, if anywhere."""
        if not self.dispatch_unit or not self.dispatch_charm_dir:
            return None
        return DispatchTarget(
            unit_name=self.dispatch_unit,
            charm_dir=Path(self.dispatch_charm_dir),
            event=self.dispatch_event or "build-finished",
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the state file."""
        data = dataclasses.asdict(self)
        data["elapsed"] = self.elapsed()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobState:
        """Read a state file's object; unknown keys are ignored, missing ones defaulted."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for required in ("id", "kind", "release", "arch"):
            if not isinstance(values.get(required), str):
                raise ValueError(f"job state has no {required!r}")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DispatchTarget:
    """Where a finished job tells the charm that it ended.

    The job runs ``juju-exec <unit> JUJU_DISPATCH_PATH=hooks/<event> ./dispatch`` in the charm
    directory.
    """

    unit_name: str
    charm_dir: Path
    event: str = "build-finished"

    def command(self, juju_exec: str = "juju-exec") -> list[str]:
        """The exact argv that dispatches the event."""
        return [juju_exec, self.unit_name, f"JUJU_DISPATCH_PATH=hooks/{self.event}", "./dispatch"]


class JobAlreadyRunning(UsageError):
    """A job of the same kind, release and architecture is running; ``job`` is that job."""

    def __init__(self, job: JobState) -> None:
        self.job = job
        super().__init__(
            f"a {job.kind} of {job.release} {job.arch} is already running (job {job.id}, "
            f"{job.phase}): wait for it, or cancel it with "
            f"'openeuler-image-builder jobs cancel {job.id}'"
        )


# ---------------------------------------------------------------------------------------------
# State files


def job_state_path(layout: StateLayout, job_id: str) -> Path:
    """``<state>/jobs/<id>.json``."""
    return layout.jobs / f"{job_id}.json"


def read_job_state(path: Path) -> JobState:
    """Read one state file.

    Raises:
        UsageError: the file is missing or not a job state.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return JobState.from_json(data)
    except FileNotFoundError:
        raise UsageError(f"job state file {path} does not exist") from None
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"job state file {path} is unreadable: {error}") from None


def write_job_state(path: Path, state: JobState) -> None:
    """Write a state file atomically (temporary file in the same directory, then rename)."""
    state.updated = iso_time()
    files.write_json_atomic(path, state.to_json())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_job_state(path: Path, change: Callable[[JobState], None]) -> JobState:
    """Read, change and rewrite a state file, serialised with every other writer.

    The job, its launcher (recording the pid) and ``list_jobs`` (recording a death) all write
    the same file; the lock keeps one from undoing another's change.
    """
    with _locked(path.parent / _STATE_LOCK):
        state = read_job_state(path)
        change(state)
        write_job_state(path, state)
        return state


def _finish_if_running(
    path: Path, result: JobResult, error: str | None, tail: list[str] | None = None
) -> JobState:
    def change(state: JobState) -> None:
        if state.result != "running":
            return
        state.result = result
        state.error = error
        state.finished = iso_time()
        if tail is not None:
            state.log_tail = tail

    return update_job_state(path, change)


def log_tail(job: JobState, lines: int = 20) -> list[str]:
    """The last ``lines`` non-empty lines of the job's log (empty when there is none)."""
    if not job.log_path:
        return []
    try:
        with open(job.log_path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 64 * 1024))
            data = stream.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return kept[-lines:]


class JobReporter:
    """A progress ``Reporter`` that writes the job's state file.

    Writes at once on a phase change and at most every ``interval`` seconds otherwise; a report
    held back by that limit is written when the interval is over (from a timer thread), so the
    state file never keeps a stale figure through a quiet stretch. ``close()`` before recording
    the job's end.
    """

    def __init__(self, path: Path, interval: float = 3.0) -> None:
        self.path = path
        self.interval = interval
        self._phase: str | None = None
        self._last = 0.0
        self._pending: tuple[str, float | None, str] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        """Record progress."""
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if phase != self._phase or now - self._last >= self.interval:
                self._pending = None
                self._write(phase, percent, detail)
                return
            self._pending = (phase, percent, detail)
            if self._timer is None:
                self._timer = threading.Timer(self.interval - (now - self._last), self._flush)
                self._timer.daemon = True
                self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None and not self._closed:
                self._write(*self._pending)
                self._pending = None

    def _write(self, phase: str, percent: float | None, detail: str) -> None:
        self._phase, self._last = phase, time.monotonic()

        def change(state: JobState) -> None:
            if state.result != "running":  # never overwrite the recorded end
                return
            state.phase = phase
            state.percent = None if percent is None else round(float(percent), 1)
            state.detail = detail

        try:
            update_job_state(self.path, change)
        except (OSError, UsageError) as error:  # progress is best effort; the work goes on
            logger.warning("could not record progress in %s: %s", self.path, error)

    def close(self) -> None:
        """Stop writing (a pending report is dropped: the job's end follows)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


# ---------------------------------------------------------------------------------------------
# Launchers


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


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if ``start`` is given, is the same process."""
    fields = proc_stat(pid)
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    return start is None or start_time(fields) == start


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


# ---------------------------------------------------------------------------------------------
# Listing, starting, cancelling


def _is_alive(job: JobState, launchers: Mapping[str, Launcher] | None) -> bool | None:
    launcher = (launchers or {}).get(job.launcher) or launcher_for(job)
    return launcher.is_alive(job)


def _record_death(path: Path, job: JobState) -> JobState:
    tail = log_tail(job)
    who = f"unit {job.unit}" if job.launcher == "systemd" else f"pid {job.pid}"
    summary = f"{job.kind} job died without finishing ({who} is gone)"
    if tail:
        summary += "; log tail: " + " | ".join(tail[-5:])
    summary += f" (log: {job.log_path})"
    return _finish_if_running(path, "failed", summary, tail)


def list_jobs(
    layout: StateLayout,
    *,
    release: str | None = None,
    launchers: Mapping[str, Launcher] | None = None,
) -> list[JobState]:
    """Every job (optionally of one release), newest first.

    A job whose state says running but whose process or unit has gone is rewritten as failed,
    with the tail of its log in ``error`` and ``log_tail``. ``launchers`` (by name) overrides
    the launchers used to check liveness.
    """
    if not layout.jobs.is_dir():
        return []
    jobs = []
    for path in layout.jobs.glob("*.json"):
        try:
            job = read_job_state(path)
        except UsageError as error:
            logger.warning("skipping %s", error)
            continue
        if release is not None and job.release != release:
            continue
        if job.running and _is_alive(job, launchers) is False:
            job = _record_death(path, job)
        jobs.append(job)
    jobs.sort(key=lambda job: (job.started, job.id), reverse=True)
    return jobs


def active_job(
    layout: StateLayout,
    release: str,
    arch: str,
    *,
    kind: JobKind | None = "build",
    launchers: Mapping[str, Launcher] | None = None,
) -> JobState | None:
    """The running job of ``kind`` (any kind with None) for ``release`` x ``arch``, or None."""
    for job in list_jobs(layout, release=release, launchers=launchers):
        if job.running and job.arch == arch and (kind is None or job.kind == kind):
            return job
    return None


def find_job(
    layout: StateLayout, job_id: str, *, launchers: Mapping[str, Launcher] | None = None
) -> JobState:
    """The job with id ``job_id``, liveness checked as in ``list_jobs`` (only this job's).

    Raises:
        UsageError: there is no such job; the message lists the known ids.
    """
    path = job_state_path(layout, job_id)
    if "/" not in job_id and path.is_file():
        job = read_job_state(path)
        if job.running and _is_alive(job, launchers) is False:
            job = _record_death(path, job)
        return job
    known = ", ".join(job.id for job in list_jobs(layout, launchers=launchers)[:10]) or "none"
    raise UsageError(f"no job {job_id!r}: known jobs (newest first): {known}")


def _package_path() -> str:
    # The directory holding the openeuler_image_builder package (``src`` in a charm).
    return str(Path(__file__).resolve().parent.parent)


def _job_environment(layout: StateLayout, environment: Mapping[str, str] | None) -> dict[str, str]:
    result = {
        STATE_DIR_ENV: str(layout.root),
        "PYTHONPATH": _package_path(),
        "PYTHONUNBUFFERED": "1",
    }
    if layout.maas_api_key_file.exists():
        result[API_KEY_FILE_ENV] = str(layout.maas_api_key_file)
    result.update(environment or {})
    check_environment(result)
    return result


def _new_job_id(layout: StateLayout, kind: JobKind, release: Release, arch: Arch) -> str:
    # Called under the start lock: the id is unique even for two starts within one second.
    base = f"{kind}-{release.name}-{arch}-{utc_now().strftime(images.STAMP_FORMAT)}"
    job_id, suffix = base, 1
    while job_state_path(layout, job_id).exists():
        job_id, suffix = f"{base}-{suffix}", suffix + 1
    return job_id


def _launch(
    layout: StateLayout,
    state: JobState,
    argv: list[str],
    launcher: Launcher,
    environment: Mapping[str, str],
) -> JobState:
    path = job_state_path(layout, state.id)
    spec = LaunchSpec(
        argv=tuple(argv),
        unit=state.unit or unit_name(state.kind, state.release, state.arch),
        log_path=Path(state.log_path),
        working_directory=layout.root,
        environment=environment,
        description=f"openeuler-image-builder {state.kind} of {state.release} {state.arch}",
        environment_file=path.with_suffix(".env"),
    )
    try:
        launched = launcher.start(spec)
    except BaseException as error:
        _finish_if_running(path, "failed", str(error))
        raise

    def change(current: JobState) -> None:
        # The job may already have written its own pid; never overwrite it.
        if current.pid is None and launched.pid is not None:
            current.pid = launched.pid
            current.pid_start = launched.pid_start
        current.unit = launched.unit or current.unit

    return update_job_state(path, change)


@dataclasses.dataclass(frozen=True)
class JobStarter:
    """Starts and lists one caller's jobs, each with the same launcher, dispatch and environment.

    The charm makes one per hook; ``work.advance`` and the actions start jobs through it. A job
    runs ``python -m openeuler_image_builder <command> --job-state F [--settings S] <options>``.
    """

    layout: StateLayout
    launcher: Launcher
    dispatch: DispatchTarget | None = None
    settings_file: Path | None = None
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    python: str = sys.executable

    def build(
        self,
        release: Release,
        arch: Arch,
        *,
        upload: bool,
        force: bool = False,
        settings_file: Path | None = None,
    ) -> JobState:
        """Start a build of ``release`` x ``arch`` in the background; returns its first state.

        Without ``force``, refuses when the store already holds an image of this release and
        arch built with the same image settings (``include-updates``, ``extra-packages``).
        ``settings_file`` overrides the starter's.

        Raises:
            JobAlreadyRunning: a build of this release and arch is running.
            UsageError: a foreground build holds the lock, an equal image exists (without
                ``force``), upload is asked for without a MAAS URL or key, or the settings file
                is bad.
            StepFailed: the launcher could not start the job (the state file then says failed).
        """
        layout = self.layout

        def check(settings: Settings) -> dict[str, Any]:
            holder = locks.lock_holder(layout, release.name, arch)
            if holder is not None:
                raise UsageError(locks.lock_refusal_message(release.name, arch, holder))
            if not force:
                for image in images.list_stored_images(layout, release=release.name, arch=arch):
                    if dict(image.settings) == images.image_settings(settings):
                        raise UsageError(
                            f"an image of {release.name} {arch} built with the same settings "
                            f"exists ({image.tarball}, built {image.built_at}): "
                            f"use force to build again (for example to pick up updates)"
                        )
            return {}

        return self._start(
            "build",
            release,
            arch,
            upload=upload,
            check=check,
            command=["build", "--release", release.name, "--arch", arch],
            options=["--upload"] if upload else [],
            settings_file=settings_file or self.settings_file,
        )

    def upload(
        self, release: Release, arch: Arch, *, name: str | None = None, title: str | None = None
    ) -> JobState:
        """Start an upload of the newest stored image of ``release`` x ``arch`` to MAAS.

        Raises:
            JobAlreadyRunning: an upload of this release and arch is running.
            UsageError: no image of this release and arch is stored, or MAAS is not configured.
            StepFailed: the launcher could not start the job.
        """
        layout = self.layout

        def check(settings: Settings) -> dict[str, Any]:
            image = images.newest_image(layout, release.name, arch)
            if image is None:
                store = images.store_dir(layout, release.name, arch)
                raise UsageError(f"no image of {release.name} {arch} in {store}: build one first")
            return {"image": str(image.tarball), "sha256": image.sha256}

        options = (["--name", name] if name else []) + (["--title", title] if title else [])
        return self._start(
            "upload",
            release,
            arch,
            upload=True,
            check=check,
            command=["jobs", "run-upload"],
            options=options,
            settings_file=self.settings_file,
        )

    def list_jobs(self) -> list[JobState]:
        """``list_jobs``, liveness checked by this starter's launcher."""
        return list_jobs(self.layout, launchers={self.launcher.name: self.launcher})

    def find_job(self, job_id: str) -> JobState:
        """``find_job``, liveness checked by this starter's launcher."""
        return find_job(self.layout, job_id, launchers={self.launcher.name: self.launcher})

    def _start(
        self,
        kind: JobKind,
        release: Release,
        arch: Arch,
        *,
        upload: bool,
        check: Callable[[Settings], dict[str, Any]],
        command: list[str],
        options: list[str],
        settings_file: Path | None,
    ) -> JobState:
        # What both kinds share: settings, environment and MAAS checks, the one-job-per-kind
        # rule and the job's own refusals (``check``, returning extra state fields) under the
        # start lock, the first state file, then the launch.
        layout, launcher, dispatch = self.layout, self.launcher, self.dispatch
        layout.ensure()
        settings = _load_settings(settings_file)
        job_environment = _job_environment(layout, self.environment)
        if upload:
            _check_upload_configured(layout, settings, job_environment)
        with _locked(layout.jobs / _START_LOCK):
            running = active_job(
                layout, release.name, arch, kind=kind, launchers={launcher.name: launcher}
            )
            if running is not None:
                raise JobAlreadyRunning(running)
            fields = check(settings)
            job_id = _new_job_id(layout, kind, release, arch)
            state = JobState(
                id=job_id,
                kind=kind,
                release=release.name,
                arch=arch,
                started=iso_time(),
                log_path=str(layout.logs / f"{job_id}.log"),
                upload_requested=upload,
                launcher=launcher.name,
                unit=unit_name(kind, release, arch) if launcher.name == "systemd" else None,
                dispatch_unit=dispatch.unit_name if dispatch else None,
                dispatch_charm_dir=str(dispatch.charm_dir) if dispatch else None,
                dispatch_event=dispatch.event if dispatch else None,
                **fields,
            )
            path = job_state_path(layout, job_id)
            write_job_state(path, state)
        argv = [self.python, "-m", "openeuler_image_builder", *command, "--job-state", str(path)]
        if settings_file is not None:
            argv += ["--settings", str(settings_file)]
        return _launch(layout, state, argv + options, launcher, job_environment)


def start_build_job(
    layout: StateLayout,
    release: Release,
    arch: Arch,
    *,
    upload: bool,
    force: bool = False,
    launcher: Launcher,
    dispatch: DispatchTarget | None = None,
    settings_file: Path | None = None,
    environment: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> JobState:
    """:meth:`JobStarter.build` without a starter (its fields given here)."""
    starter = JobStarter(layout, launcher, dispatch, settings_file, environment or {}, python)
    return starter.build(release, arch, upload=upload, force=force)


def start_upload_job(
    layout: StateLayout,
    release: Release,
    arch: Arch,
    *,
    name: str | None = None,
    title: str | None = None,
    launcher: Launcher,
    dispatch: DispatchTarget | None = None,
    settings_file: Path | None = None,
    environment: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> JobState:
    """:meth:`JobStarter.upload` without a starter (its fields given here)."""
    starter = JobStarter(layout, launcher, dispatch, settings_file, environment or {}, python)
    return starter.upload(release, arch, name=name, title=title)


def _load_settings(settings_file: Path | None) -> Settings:
    if settings_file is None:
        return Settings()
    return load_settings_file(settings_file)


def load_settings_file(path: Path) -> Settings:
    """Read a ``Settings`` JSON dump (what the charm passes with ``--settings``).

    Raises:
        UsageError: the file is missing, not JSON, or holds an invalid value.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"settings file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"settings file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"settings file {path} must hold a JSON object of settings")
    return Settings.from_mapping(data)


def write_settings_file(path: Path, settings: Settings) -> bool:
    """Write ``settings`` for jobs to read with ``--settings``; returns whether it changed.

    No secret goes in: the MAAS key reaches jobs by its own root-only file.
    """
    return files.write_if_changed(
        path, files.json_text(settings.model_dump(mode="json"), indent=1)
    )


def _check_upload_configured(
    layout: StateLayout, settings: Settings, environment: Mapping[str, str]
) -> None:
    if not (settings.maas_url or environment.get("MAAS_URL")):
        raise UsageError("upload needs a MAAS URL: set maas-url (or relate to maas-region)")
    key_file = environment.get(API_KEY_FILE_ENV) or str(layout.maas_api_key_file)
    if not Path(key_file).is_file():
        raise UsageError(
            f"upload needs the MAAS API key in {key_file}: set maas-api-key to a Juju secret "
            f"(or write the key to that file, mode 0600)"
        )


def cancel_job(
    layout: StateLayout, job: JobState, launcher: Launcher, timeout: float = 60
) -> JobState:
    """Stop a running job and return its final state.

    The job normally records ``cancelled`` itself while it cleans up; if it could not (it was
    killed), this records it.
    """
    path = job_state_path(layout, job.id)
    current = read_job_state(path)
    if not current.running:
        return current
    launcher.stop(current, timeout)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        current = read_job_state(path)
        if not current.running:
            return current
        time.sleep(0.1)
    return _finish_if_running(
        path,
        "cancelled",
        f"{current.kind} cancelled; the job was stopped before it could record its end "
        f"(log: {current.log_path})",
        log_tail(current),
    )


def cancel_running(layout: StateLayout, launcher: Launcher, timeout: float = 60) -> list[JobState]:
    """Stop every running job (the charm's ``remove``); returns their final states.

    A job that cannot be stopped is logged and left out; the others are still stopped.
    """
    stopped = []
    for job in list_jobs(layout, launchers={launcher.name: launcher}):
        if not job.running:
            continue
        try:
            stopped.append(cancel_job(layout, job, launcher, timeout=timeout))
        except (StepFailed, UsageError) as error:
            logger.warning("could not stop job %s: %s", job.id, error)
    return stopped


# ---------------------------------------------------------------------------------------------
# Run by the job itself


def dispatch_finished(job: JobState, *, juju_exec: str | None = None, timeout: float = 60) -> bool:
    """Tell the charm the job ended (``juju-exec ... ./dispatch``); True when dispatched.

    A no-op (False) without a dispatch target or without ``juju-exec``. Waits at most
    ``timeout`` seconds: ``juju-exec`` queues behind the unit's machine lock, and a systemd
    unit's leftover processes are killed when the job ends, so it cannot be left running;
    if it times out, the charm still learns the result from the state file at the next hook.
    """
    target = job.dispatch_target()
    if target is None:
        return False
    executable = juju_exec or shutil.which("juju-exec")
    if executable is None:
        logger.info("no juju-exec on this machine: not dispatching %s", target.event)
        return False
    try:
        completed = subprocess.run(
            target.command(executable),
            cwd=target.charm_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        logger.warning("juju-exec did not finish within %ss: the charm will poll", timeout)
        return False
    except OSError as error:
        logger.warning("could not run juju-exec: %s", error)
        return False
    if completed.returncode != 0:
        logger.warning(
            "juju-exec exited with %s: %s", completed.returncode, completed.stderr.strip()
        )
        return False
    return True


def begin_job(path: Path) -> JobState:
    """Called by the job at its start: records its own pid and returns its state."""

    def change(state: JobState) -> None:
        state.pid = os.getpid()
        state.pid_start = process_start_time(os.getpid())
        state.phase = "starting"

    return update_job_state(path, change)


def end_job(
    path: Path,
    result: JobResult,
    *,
    error: str | None = None,
    **fields: Any,
) -> JobState:
    """Called by the job at its end: records the result (and ``fields``), phase ``done``."""

    def change(state: JobState) -> None:
        state.result = result
        state.error = error
        state.finished = iso_time()
        state.phase = "done"
        if result == "succeeded":
            state.percent = 100.0
        for key, value in fields.items():
            setattr(state, key, value)
        if result != "succeeded":
            state.log_tail = log_tail(state)

    return update_job_state(path, change)
