"""Watching and stopping jobs: listing them (recording deaths), cancelling, dispatching the end.

A "running" job whose process or unit has gone is reported failed, with its log's tail. When a
job ends it dispatches a custom event to the charm (``dispatch_finished``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.unit.jobs.launchers import Launcher, launcher_for
from openeuler_image_builder.unit.jobs.state import (
    JobKind,
    JobState,
    _finish_if_running,
    job_state_path,
    log_tail,
    read_job_state,
)

logger = logging.getLogger(__name__)


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
    # stop() returns once the job's processes have ended (systemctl stop waits for the unit;
    # ProcessLauncher waits for the process): what the job recorded by then is final.
    current = read_job_state(path)
    if not current.running:
        return current
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
