"""Status messages and action results, from jobs, history and inventory (pure functions).

The charm turns :class:`UnitStatus` into an ops status object and passes the result dicts to
``event.set_results``. Result keys are lowercase with hyphens (Juju's rule for action results:
``^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$``) and every value is a string or a nested dict of strings,
so what ``juju run`` prints is exactly what the tests check. Lists are nested dicts keyed by a
zero-padded position (``"01"``, ``"02"``...), which Juju prints in order.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from openeuler_image_builder.core.settings import KVM_UNAVAILABLE
from openeuler_image_builder.core.timestamps import format_duration, seconds_between, utc_now
from openeuler_image_builder.unit.fleet import FleetImage
from openeuler_image_builder.unit.history import BuildRecord, History
from openeuler_image_builder.unit.inventory import LocalImage, newest_images
from openeuler_image_builder.unit.jobs import JobState

StatusLevel = Literal["active", "maintenance", "waiting", "blocked"]
ResultValue = str | dict[str, Any]

RESULT_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")
MAX_ERROR = 120

PHASE_TEXT: dict[str, str] = {
    "starting": "starting",
    "fetch-iso": "downloading the ISO",
    "render": "rendering the recipe",
    "install": "installing packages",
    "pack": "packing the image",
    "verify": "verifying the image",
    "upload": "uploading",
    "sync": "waiting for MAAS to copy it to every region",
    "done": "finishing",
}

# Failures after which this unit cannot build at all until the operator acts (Blocked); any
# other failure leaves the unit Active (it can still build other releases, or retry).
_DISABLING_FAILURES = (
    re.compile(r"KVM unavailable", re.IGNORECASE),
    re.compile(r"not enough (free )?(disk )?space", re.IGNORECASE),
    re.compile(r"\bdisk[- ]space\b.*\b(missing|short|need)", re.IGNORECASE),
    # The build tools are gone (backends/vm messages); the charm reinstalls them only
    # on upgrade-charm or a config change, so the operator must act.
    re.compile(r"\bPacker not found\b|did not report a Packer version", re.IGNORECASE),
    re.compile(r"qemu-system-\w+ not found", re.IGNORECASE),
    re.compile(r"^setup-host failed", re.IGNORECASE),
)


@dataclasses.dataclass(frozen=True)
class UnitStatus:
    """A unit status: the charm maps ``level`` to ops' status classes."""

    level: StatusLevel
    message: str


def failure_disables_unit(error: str | None) -> bool:
    """Whether a job's error means the unit cannot build anything until the operator acts."""
    return bool(error) and any(pattern.search(error or "") for pattern in _DISABLING_FAILURES)


def _shorten(text: str, limit: int = MAX_ERROR) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def job_line(job: JobState, *, now: datetime.datetime | None = None) -> str:
    """One line for a running job, as ``juju status`` shows it.

    ``building 24.03-LTS-SP2 (x86_64): installing packages 45%, 7m``;
    ``uploading 24.03-LTS-SP2 (x86_64): 60%, 2m`` (an upload job, or a build's upload phase).
    """
    now = now or utc_now()
    target = f"{job.release} ({job.arch})"
    percent = "" if job.percent is None else f"{job.percent:.0f}%"
    elapsed = format_duration(job.elapsed(now))
    if job.kind == "upload" or job.phase in ("upload", "sync"):
        if job.phase == "sync":
            what = PHASE_TEXT["sync"]
        elif job.phase == "upload" and percent:
            what = percent
        else:
            what = PHASE_TEXT.get(job.phase, job.phase) + (f" {percent}" if percent else "")
        return f"uploading {target}: {what}, {elapsed}"
    phase = PHASE_TEXT.get(job.phase, job.phase)
    progress = f"{phase} {percent}" if percent else phase
    return f"building {target}: {progress}, {elapsed}"


def _share_suffix(share: Sequence[str] | None, units: int, configured: int) -> str:
    if share is None or units <= 1:
        return ""
    if not share:
        return f" [share: none of {configured} releases, {units} units]"
    return f" [share: {', '.join(share)} of {configured} releases, {units} units]"


def _failure(
    history: History | None, arch: str, share: Sequence[str] | None
) -> BuildRecord | None:
    if history is None:
        return None
    candidates: list[BuildRecord] = []
    latest = history.latest(arch=arch)
    if latest is not None:
        candidates.append(latest)
    for release in share or ():
        record = history.latest(release, arch)
        if record is not None:
            candidates.append(record)
    failed = [record for record in candidates if record.result == "failed"]
    if not failed:
        return None
    return max(failed, key=lambda r: (r.finished or r.started, r.job_id))


def unit_status(
    *,
    unit_name: str,
    arch: str,
    jobs: Sequence[JobState],
    images: Sequence[LocalImage],
    history: History | None = None,
    share: Sequence[str] | None = None,
    units: int = 1,
    configured: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> UnitStatus:
    """The unit's work status (:func:`charm_statuses` adds the unit's own problems).

    Precedence: a running job (Maintenance, with its phase, percent and elapsed time, and how
    many builds are queued) > the newest failed build of the unit's releases (Active, with the
    summary and the action that shows the log; Blocked if the failure disables the unit) >
    a queued build that could not start (Active, or Blocked as above) > queued builds
    (Maintenance) > images (Active "ready: ...") > idle (Active).

    Args:
        unit_name: for the ``juju run <unit> build-status`` hint.
        arch: the unit's architecture.
        jobs: ``jobs.list_jobs()`` (newest first).
        images: ``inventory.list_local_images()``.
        history: the unit's history (failures, queue).
        share: releases assigned to this unit (None: not known / single unit).
        units: number of units sharing the work (the share is shown when more than one).
        configured: the configured releases.
        now: current time (tests).
    """
    now = now or utc_now()
    suffix = _share_suffix(share, units, len(configured))
    queued = [q for q in (history.queue if history else []) if q.job_id is None]
    running = [job for job in jobs if job.result == "running"]
    if running:
        message = job_line(running[0], now=now)
        if len(running) > 1:
            message += f" (+{len(running) - 1} more job{'s' if len(running) > 2 else ''})"
        if queued:
            message += f"; {len(queued)} queued"
        return UnitStatus("maintenance", message + suffix)
    failure = _failure(history, arch, share)
    if failure is not None:
        summary = _shorten(failure.error or "no error recorded")
        message = (
            f"build of {failure.release} ({failure.arch}) failed: {summary}; for the log run "
            f"'juju run {unit_name} build-status release={failure.release}'"
        )
        level: StatusLevel = "blocked" if failure_disables_unit(failure.error) else "active"
        return UnitStatus(level, message + suffix)
    not_started = [h for h in (history.held.values() if history else []) if h.job_id is None]
    if not_started:
        # A queued build whose job could not even start (no record, so no failure above).
        first = not_started[0]
        level = "blocked" if failure_disables_unit(first.reason) else "active"
        message = f"could not start the build of {first.release} ({first.arch}): "
        message += _shorten(first.reason)
        return UnitStatus(level, message + suffix)
    if queued:
        names = ", ".join(q.release for q in queued)
        return UnitStatus("maintenance", f"queued: {names}{suffix}")
    ready = _ready_text(images, arch, share)
    if ready:
        return UnitStatus("active", f"ready: {ready}{suffix}")
    if share is not None and units > 1 and not share:
        return UnitStatus("active", f"idle: no releases assigned to this unit{suffix}")
    if not configured:
        return UnitStatus("active", "idle: no images; set releases or run build-image")
    return UnitStatus("active", f"idle{suffix}")


def charm_statuses(
    *,
    install_error: str,
    tools_installed: bool,
    kvm_usable: bool,
    schedule_error: str,
    maas: Sequence[UnitStatus],
    work: UnitStatus,
    maas_text: str,
) -> list[UnitStatus]:
    """Every status that applies to the charm's unit, for its collect-status handler.

    The charm adds them all; ops shows the highest level (blocked > maintenance > waiting >
    active), the first one given within a level.

    Args:
        install_error: why installing the build tools failed ("" when it did not).
        tools_installed: the build tools were installed.
        kvm_usable: KVM is usable, or not needed (``accelerator=tcg``).
        schedule_error: why the rebuild timer could not be applied ("").
        maas: the MAAS statuses (missing key or URL, failed credential check).
        work: :func:`unit_status`.
        maas_text: what MAAS holds, or that there is none (for the Active status).
    """
    statuses = []
    if install_error:
        statuses.append(
            UnitStatus(
                "blocked",
                f"installing the build tools failed: {install_error}; "
                f"retrying at each update-status",
            )
        )
    elif not tools_installed:
        statuses.append(UnitStatus("maintenance", "waiting to install the build tools"))
    if not kvm_usable:
        statuses.append(UnitStatus("blocked", KVM_UNAVAILABLE))
    if schedule_error:
        statuses.append(UnitStatus("blocked", schedule_error))
    statuses += maas
    if work.level == "active":
        statuses.append(UnitStatus("active", active_message(work.message, maas_text)))
    else:
        statuses.append(work)
    return statuses


def active_message(work: str, maas_text: str) -> str:
    """The Active status: the unit's work, then what MAAS holds (or that there is no MAAS)."""
    if work.startswith("idle: no images"):
        return f"ready: {maas_text}"
    if work.startswith("build of "):  # a failure summary: already long, keep it whole
        return work
    return f"{work}; {maas_text}"


def _ready_text(images: Sequence[LocalImage], arch: str, share: Sequence[str] | None) -> str:
    newest = newest_images([image for image in images if image.arch == arch])
    wanted = list(share) if share else sorted({release for release, _ in newest})
    in_maas, local = [], []
    for release in wanted:
        image = newest.get((release, arch))
        if image is None:
            continue
        date = (image.built_at or "")[:10] or "date unknown"
        (in_maas if image.uploaded else local).append((release, date))
    parts = []
    if in_maas:
        dates = {date for _, date in in_maas}
        if len(dates) == 1:
            names = ", ".join(release for release, _ in in_maas)
            parts.append(f"{names} in MAAS ({dates.pop()})")
        else:
            parts.append(", ".join(f"{r} ({d})" for r, d in in_maas) + " in MAAS")
    if local:
        parts.append(", ".join(f"{r} ({d})" for r, d in local) + " built, not in MAAS")
    return "; ".join(parts)


# ---- action results ----------------------------------------------------------------------


def _indexed(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    width = max(2, len(str(len(rows))))
    return {str(index).zfill(width): dict(row) for index, row in enumerate(rows, start=1)}


def check_result_keys(result: Mapping[str, Any], path: str = "") -> None:
    """Raise ValueError when a key (at any depth) is not a valid Juju action-result key."""
    for key, value in result.items():
        if not isinstance(key, str) or not RESULT_KEY.match(key):
            raise ValueError(f"invalid action result key {path}{key!r}")
        if key in ("stdout", "stderr", "stdout-encoding", "stderr-encoding") and not path:
            raise ValueError(f"action result key {key!r} is reserved by Juju")
        if isinstance(value, Mapping):
            check_result_keys(value, f"{path}{key}.")
        elif not isinstance(value, str):
            raise ValueError(f"action result {path}{key} is not a string: {value!r}")


def job_result(
    job: JobState,
    *,
    now: datetime.datetime | None = None,
    log_lines: Sequence[str] = (),
) -> dict[str, Any]:
    """One job in an action result (``build-status``, ``build-image wait=true``)."""
    now = now or utc_now()
    row: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "release": job.release,
        "arch": job.arch,
        "phase": job.phase,
        "percent": "" if job.percent is None else f"{job.percent:.0f}",
        "started": job.started,
        "finished": job.finished or "",
        "elapsed": format_duration(job.elapsed(now)),
        "result": job.result,
        "error": job.error or "",
        "log-path": job.log_path,
        "image": job.image or "",
        "sha256": job.sha256 or "",
        "uploaded": "true" if job.uploaded else "false",
    }
    if job.detail:
        row["detail"] = job.detail
    if log_lines:
        row["log-tail"] = "\n".join(log_lines)
    return row


def build_status_result(
    jobs: Sequence[JobState],
    *,
    history: History | None = None,
    release: str | None = None,
    log_tail: Callable[[JobState], Sequence[str]] | None = None,
    recent: int = 5,
    status: UnitStatus | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The ``build-status`` result: running jobs, then the ``recent`` newest finished ones.

    Args:
        jobs: ``jobs.list_jobs()`` (newest first).
        history: adds the recorded history (result, duration, sha256, uploaded) and the queue.
        release: only this exact release.
        log_tail: ``jobs.log_tail``; the last log lines of running and failed jobs are included.
        recent: how many finished jobs to include.
        status: the unit status, repeated as ``status``.
        now: current time (tests).
    """
    now = now or utc_now()
    chosen = [job for job in jobs if release is None or job.release == release]
    running = [job for job in chosen if job.result == "running"]
    finished = [job for job in chosen if job.result != "running"][:recent]
    rows = []
    for job in running + finished:
        lines = log_tail(job) if log_tail and job.result in ("running", "failed") else ()
        rows.append(job_result(job, now=now, log_lines=lines))
    result: dict[str, Any] = {
        "running": str(len(running)),
        "jobs": _indexed(rows) if rows else "none" + (f" for {release}" if release else ""),
    }
    if status is not None:
        result["status"] = status.message
    if history is not None:
        records = [r for r in history.records if release is None or r.release == release]
        if records:
            result["history"] = _indexed([_record_result(r) for r in records[:recent]])
        queued = [q for q in history.queue if release is None or q.release == release]
        if queued:
            result["queue"] = ", ".join(
                f"{q.release} ({q.arch}, {q.reason}{', started' if q.job_id else ''})"
                for q in queued
            )
        held = [h for h in history.held.values() if release is None or h.release == release]
        if held:
            result["held"] = "; ".join(
                f"{h.release} ({h.arch}): {_shorten(h.reason, 80)}" for h in held
            )
    check_result_keys(result)
    return result


def _record_result(record: BuildRecord) -> dict[str, str]:
    return {
        "job-id": record.job_id,
        "kind": record.kind,
        "release": record.release,
        "arch": record.arch,
        "result": record.result,
        "finished": record.finished or "",
        "duration": format_duration(record.duration),
        "sha256": record.sha256 or "",
        "uploaded": "true" if record.uploaded else "false",
        "trigger": record.trigger,
    }


def job_outcome(job: JobState) -> str:
    """``build of 24.03-LTS-SP2 (x86_64) failed: <error>`` (how a job ended, one line)."""
    return f"{job.kind} of {job.release} ({job.arch}) {job.result}" + (
        f": {job.error}" if job.error else ""
    )


def cancel_result(job: JobState) -> dict[str, Any]:
    """The ``cancel-build`` result: the job's id and final result."""
    return {
        "job-id": job.id,
        "result": job.result,
        "message": f"{job.kind} of {job.release} ({job.arch}): {job.result}",
    }


def build_started_result(
    job: JobState, *, unit_name: str, upload_note: str, wait: bool = False
) -> dict[str, Any]:
    """The ``build-image`` (or ``upload-image``) result when the job has just started."""
    verb = "build" if job.kind == "build" else "upload"
    result: dict[str, Any] = {
        "job-id": job.id,
        "release": job.release,
        "arch": job.arch,
        "upload": upload_note,
        "log-path": job.log_path,
        "message": (
            f"{verb} of {job.release} ({job.arch}) started as job {job.id}"
            + (
                ""
                if wait
                else f"; follow it with 'juju status' or "
                f"'juju run {unit_name} build-status release={job.release}'"
            )
        ),
    }
    check_result_keys(result)
    return result


def list_images_result(
    *,
    local: Sequence[LocalImage],
    fleet: Sequence[FleetImage] | None = None,
    maas: Sequence[Mapping[str, Any]] | None = None,
    maas_error: str | None = None,
) -> dict[str, Any]:
    """The ``list-images`` result: this unit's images, the application's, and ours in MAAS.

    Args:
        local: this unit's images.
        fleet: the merged inventory of every unit (``fleet.merge_inventories``), if known.
        maas: our images in MAAS as mappings (e.g. ``dataclasses.asdict`` of
            ``maas.MaasImage``); keys are turned into result keys (``_`` -> ``-``), values into
            strings.
        maas_error: why MAAS could not be listed (not configured, unreachable).
    """
    result: dict[str, Any] = {
        "local": _indexed([image.to_result() for image in local]) if local else "none",
    }
    if fleet is not None:
        result["application"] = (
            _indexed([image.to_result() for image in fleet]) if fleet else "none"
        )
    if maas is not None:
        result["maas"] = _indexed([_plain(row) for row in maas]) if maas else "none"
    if maas_error:
        result["maas-error"] = maas_error
    check_result_keys(result)
    return result


def _result_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")
    return key or "value"


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for name, value in row.items():
        key = _result_key(str(name))
        if isinstance(value, Mapping):
            plain[key] = _plain(value)
        elif isinstance(value, (list, tuple, set, frozenset)):
            plain[key] = ", ".join(str(item) for item in value)
        elif isinstance(value, bool):
            plain[key] = "true" if value else "false"
        elif value is None:
            plain[key] = ""
        else:
            plain[key] = str(value)
    return plain


def follow_job(
    read: Callable[[], JobState],
    log: Callable[[str], None],
    *,
    poll_interval: float = 5.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime.datetime] = utc_now,
) -> JobState:
    """Stream a job's progress (``build-image wait=true``) until it ends; return its last state.

    Logs one line (:func:`job_line`) when the phase changes or the percentage moves by 5 or
    more, and a last line with the result.

    Args:
        read: returns the job's current state (``jobs.find_job(layout, id)``).
        log: ``event.log``.
        poll_interval: seconds between reads.
        timeout: give up after this many seconds (None: wait until the job ends); the job
            goes on running, and the last state read is returned.
        sleep: waits between reads (injectable for tests).
        clock: monotonic seconds, for the timeout (injectable for tests).
        now: the current UTC time, for elapsed times (injectable for tests).
    """
    deadline = None if timeout is None else clock() + timeout
    last_phase: str | None = None
    last_percent: float | None = None
    while True:
        job = read()
        if job.result != "running":
            took = format_duration(seconds_between(job.started, job.finished))
            ending = f"{job.kind} of {job.release} ({job.arch}) {job.result} after {took}"
            if job.error:
                ending += f": {job.error}"
            log(ending)
            return job
        moved = job.percent is not None and (
            last_percent is None or abs(job.percent - last_percent) >= 5
        )
        if job.phase != last_phase or moved:
            log(job_line(job, now=now()))
            last_phase, last_percent = job.phase, job.percent
        if deadline is not None and clock() >= deadline:
            log(f"stopped waiting; job {job.id} goes on: run build-status to follow it")
            return job
        sleep(poll_interval)
