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

The modules, one idea each: ``state`` (the state file, ``JobReporter``, ``begin_job`` and
``end_job``), ``launchers`` (starting, watching and stopping a job's process or unit),
``control`` (listing jobs, cancelling them, dispatching a job's end) and ``starter``
(``JobStarter`` and the settings file that jobs read). Callers use the names re-exported here.
"""

from __future__ import annotations

from openeuler_image_builder.core.processes import process_alive, process_start_time
from openeuler_image_builder.unit.jobs.control import (
    active_job,
    cancel_job,
    cancel_running,
    dispatch_finished,
    find_job,
    list_jobs,
)
from openeuler_image_builder.unit.jobs.launchers import (
    Launched,
    Launcher,
    LaunchSpec,
    ProcessLauncher,
    Runner,
    SystemdLauncher,
    check_environment,
    launcher_for,
    run_command,
    unit_name,
)
from openeuler_image_builder.unit.jobs.starter import (
    PACKER_ENV,
    JobStarter,
    load_settings_file,
    start_build_job,
    start_upload_job,
    write_settings_file,
)
from openeuler_image_builder.unit.jobs.state import (
    DispatchTarget,
    JobAlreadyRunning,
    JobKind,
    JobReporter,
    JobResult,
    JobState,
    begin_job,
    end_job,
    iso_time,
    job_state_path,
    log_tail,
    read_job_state,
    update_job_state,
    write_job_state,
)

__all__ = [
    "PACKER_ENV",
    "DispatchTarget",
    "JobAlreadyRunning",
    "JobKind",
    "JobReporter",
    "JobResult",
    "JobStarter",
    "JobState",
    "LaunchSpec",
    "Launched",
    "Launcher",
    "ProcessLauncher",
    "Runner",
    "SystemdLauncher",
    "active_job",
    "begin_job",
    "cancel_job",
    "cancel_running",
    "check_environment",
    "dispatch_finished",
    "end_job",
    "find_job",
    "iso_time",
    "job_state_path",
    "launcher_for",
    "list_jobs",
    "load_settings_file",
    "log_tail",
    "process_alive",
    "process_start_time",
    "read_job_state",
    "run_command",
    "start_build_job",
    "start_upload_job",
    "unit_name",
    "update_job_state",
    "write_job_state",
    "write_settings_file",
]
