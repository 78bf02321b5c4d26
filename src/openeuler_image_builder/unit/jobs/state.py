"""A job's state file: what a background job records, and how it is read and written.

Each job has a JSON state file ``<state>/jobs/<id>.json`` that the job itself rewrites atomically
at each phase change (``JobReporter``) and at most every few seconds otherwise; every writer
goes through ``update_job_state``, serialised by a lock in the jobs directory. The job records
its start and end with ``begin_job`` and ``end_job``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from openeuler_image_builder.core import files
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.processes import process_start_time
from openeuler_image_builder.core.timestamps import format_utc, parse_utc_or_none, utc_now

logger = logging.getLogger(__name__)

JobKind = Literal["build", "upload"]
JobResult = Literal["running", "succeeded", "failed", "cancelled"]

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
# Run by the job itself


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
