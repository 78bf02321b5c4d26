"""``jobs``: list and cancel background jobs; ``jobs run-upload`` is what upload jobs run.

Also ``execute_job()``, the frame every background job runs in: it records the job's pid, its
progress, its end (succeeded, failed, cancelled) in the state file, and dispatches the charm's
``build-finished`` event.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openeuler_image_builder import maas
from openeuler_image_builder.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_json_option, emit
from openeuler_image_builder.core import cancellation, catalogue
from openeuler_image_builder.core.errors import Cancelled, StepFailed, UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.progress import MultiReporter, Reporter
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.core.timestamps import utc_now
from openeuler_image_builder.pipeline.upload import upload_to_maas
from openeuler_image_builder.unit import jobs

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Register ``jobs`` (list), ``jobs cancel`` and the internal ``jobs run-upload``."""
    parser = subparsers.add_parser(
        "jobs",
        help="list background build and upload jobs, or cancel one",
        description=(
            "List background jobs (newest first) with their phase, progress and result; a job "
            "whose process died is reported failed with the end of its log. "
            "'jobs cancel ID' (or --release) stops a running job."
        ),
    )
    parser.add_argument("--release", default=None, help="only jobs of this release")
    add_json_option(parser)
    parser.set_defaults(func=run_list)
    commands = parser.add_subparsers(dest="jobs_command", metavar="{cancel}")

    cancel = commands.add_parser("cancel", help="stop a running job")
    cancel.add_argument("job_id", nargs="?", default=None, metavar="ID", help="the job's id")
    cancel.add_argument("--release", default=None, help="the running build of this release")
    cancel.add_argument("--arch", default=None, help="with --release: x86_64 or aarch64")
    cancel.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for the job to stop"
    )
    add_json_option(cancel)
    cancel.set_defaults(func=run_cancel)

    upload = commands.add_parser("run-upload")
    upload.add_argument("--job-state", type=Path, required=True)
    upload.add_argument("--settings", type=Path, default=None)
    upload.add_argument("--name", default=None)
    upload.add_argument("--title", default=None)
    upload.set_defaults(func=run_upload_job)


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe(job: jobs.JobState) -> str:
    """One line for a human: id, result, phase and progress, elapsed time, error."""
    percent = "" if job.percent is None else f" {job.percent:.0f}%"
    text = f"{job.id}  {job.result:<9} {job.phase}{percent}  {_elapsed(job.elapsed())}"
    if job.error:
        text += f"  {job.error}"
    return text


def run_list(args: argparse.Namespace) -> int:
    """``jobs``: list the jobs."""
    release = catalogue.resolve(args.release).name if args.release else None
    listed = jobs.list_jobs(StateLayout(), release=release)
    text = "\n".join(describe(job) for job in listed) or "no jobs"
    emit(args, [job.to_json() for job in listed], text)
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    """``jobs cancel``: stop a running job and report its final state."""
    layout = StateLayout()
    if args.job_id and args.release:
        raise UsageError("give a job ID or --release, not both")
    if args.job_id:
        job = jobs.find_job(layout, args.job_id)
    elif args.release:
        release = catalogue.resolve(args.release)
        arch = None if args.arch is None else catalogue.resolve_arch(args.arch)
        running = [
            job
            for job in jobs.list_jobs(layout, release=release.name)
            if job.running and (arch is None or job.arch == arch)
        ]
        if not running:
            raise UsageError(
                f"no running job of {release.name}: see 'openeuler-image-builder jobs'"
            )
        if len(running) > 1:
            ids = ", ".join(job.id for job in running)
            raise UsageError(f"several jobs of {release.name} run ({ids}): give one ID")
        job = running[0]
    else:
        raise UsageError("give the job ID or --release R: see 'openeuler-image-builder jobs'")
    if not job.running:
        raise UsageError(f"job {job.id} is not running (it {job.result})")
    final = jobs.cancel_job(layout, job, jobs.launcher_for(job), timeout=args.timeout)
    emit(args, final.to_json(), describe(final))
    return EXIT_OK


def log_reporter(step: float = 10.0) -> Reporter:
    """A reporter that prints progress lines to stdout (the job's log).

    One line on each phase change and every ``step`` percent.
    """
    last: dict[str, float | None] = {}

    def report(phase: str, percent: float | None, detail: str = "") -> None:
        previous = last.get(phase, -1.0)
        if (
            phase in last
            and (percent is None or previous is None or percent - previous < step)
            and percent != 100
        ):
            return
        last[phase] = percent
        stamp = utc_now().strftime("%H:%M:%S")
        figure = "" if percent is None else f" {percent:.0f}%"
        sys.stdout.write(f"{stamp} {phase}{figure} {detail}".rstrip() + "\n")
        sys.stdout.flush()

    return report


JobWork = Callable[[jobs.JobState, Reporter], dict[str, Any]]


def execute_job(state_path: Path, work: JobWork, reporter: Reporter) -> int:
    """Run ``work`` as the background job whose state file is ``state_path``.

    Records the pid, then progress (``work`` gets a reporter that writes the state file), then
    the result and the fields ``work`` returns; a SIGTERM/SIGINT becomes ``cancelled``. Finally
    dispatches the charm's event. Returns the exit status.
    """
    logging.getLogger().setLevel(logging.INFO)
    state = jobs.begin_job(state_path)
    sys.stdout.write(f"job {state.id} started (pid {state.pid})\n")
    sys.stdout.flush()
    state_reporter = jobs.JobReporter(state_path)
    progress = MultiReporter(state_reporter, reporter)
    outcome: jobs.JobResult = "failed"
    error: str | None = None
    fields: dict[str, Any] = {}
    status = EXIT_FAILED
    with cancellation.interrupt_on_signals():
        try:
            fields = work(state, progress)
            outcome, status = "succeeded", EXIT_OK
        except (Cancelled, cancellation.Interrupted):
            outcome, error = "cancelled", f"{state.kind} cancelled"
        except UsageError as failure:
            error, status = str(failure), EXIT_USAGE
        except StepFailed as failure:
            error = str(failure)
        except Exception as failure:
            logger.exception("the job failed unexpectedly")
            error = f"{state.kind} failed: internal error: {failure} (log: {state.log_path})"
    # Record the end and tell the charm even if another SIGTERM arrives meanwhile.
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        state_reporter.close()
        if error:
            sys.stdout.write(f"error: {error}\n")
            sys.stdout.flush()
        # The log is complete before the state file says the job ended.
        sys.stdout.write(f"job {state.id} {outcome}\n")
        sys.stdout.flush()
        final = jobs.end_job(state_path, outcome, error=error, **fields)
        jobs.dispatch_finished(final)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def run_upload_job(args: argparse.Namespace) -> int:
    """``jobs run-upload``: upload the image named in the job state (run by upload jobs)."""

    def work(state: jobs.JobState, reporter: Reporter) -> dict[str, Any]:
        release = catalogue.resolve(state.release)
        arch = catalogue.resolve_arch(state.arch)
        settings = jobs.load_settings_file(args.settings) if args.settings else Settings()
        if not state.image:
            raise UsageError(f"job {state.id} names no image to upload")
        tarball = Path(state.image)
        if not tarball.is_file():
            raise UsageError(f"the image {tarball} is gone: build it again")
        url, key = maas.connection_settings(default_url=settings.maas_url)
        if not url:
            raise UsageError("upload needs the MAAS URL: set maas-url")
        if not key:
            raise UsageError(f"upload needs the MAAS API key file ({maas.API_KEY_FILE_ENV})")
        started = time.monotonic()
        with maas.MaasClient(
            url, key, ca_certificate=settings.maas_ca_certificate or None
        ) as client:
            result = upload_to_maas(
                client,
                tarball,
                layout=StateLayout(),
                release=release,
                arch=arch,
                scheme=settings.maas_name_scheme,
                name=args.name,
                title=args.title,
                progress=reporter,
            )
        sys.stdout.write(result.message + "\n")
        return {
            "uploaded": True,
            "sha256": result.sha256,
            "maas_name": result.name,
            "durations": {"upload": round(time.monotonic() - started, 3)},
        }

    return execute_job(args.job_state, work, log_reporter())
