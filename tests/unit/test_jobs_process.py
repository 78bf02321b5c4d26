"""The detached-process launcher, exercised for real: start, progress in the state file,
cancel, and death detection (kill -9), with the real job frame (``cli.jobs.execute_job``)
running a stand-in piece of work.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.unit import jobs
from openeuler_image_builder.unit.jobs import starter

# A job whose work reports progress through the real job frame, then waits (or fails, or ignores
# SIGTERM). It stands in for the build's work; the frame around it is the real one.
JOB = """
import signal, sys, time
from pathlib import Path
from openeuler_image_builder.cli.jobs import execute_job, log_reporter
from openeuler_image_builder.core.errors import StepFailed

mode = sys.argv[2]

def work(state, progress):
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    progress("fetch-iso", 100, "cached")
    progress("install", 50, "package 50 of 100")
    print("the installer is working", flush=True)
    if mode == "fail":
        raise StepFailed("install", "packer build failed: stand-in failure", "/tmp/packer.log")
    if mode == "succeed":
        return {"image": "/images/x.tar.gz", "sha256": "ab" * 32}
    time.sleep(600)
    return {}

sys.exit(execute_job(Path(sys.argv[1]), work, log_reporter()))
"""


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    return layout


@pytest.fixture
def started(layout: StateLayout) -> Iterator[Callable[..., jobs.JobState]]:
    """Start stand-in jobs with the real ProcessLauncher; kill leftovers at the end."""
    launched: list[jobs.JobState] = []

    def start(mode: str, dispatch: jobs.DispatchTarget | None = None) -> jobs.JobState:
        state = jobs.JobState(
            id=f"build-24.03-LTS-SP3-x86_64-{len(launched)}",
            kind="build",
            release="24.03-LTS-SP3",
            arch="x86_64",
            started=jobs.iso_time(),
            log_path=str(layout.logs / f"job{len(launched)}.log"),
            launcher="process",
            dispatch_unit=dispatch.unit_name if dispatch else None,
            dispatch_charm_dir=str(dispatch.charm_dir) if dispatch else None,
        )
        path = jobs.job_state_path(layout, state.id)
        jobs.write_job_state(path, state)
        launcher = jobs.ProcessLauncher()
        spec = jobs.LaunchSpec(
            argv=(sys.executable, "-c", JOB, str(path), mode),
            unit="unused",
            log_path=Path(state.log_path),
            working_directory=layout.root,
            environment={"PYTHONPATH": starter._package_path()},
            description="test job",
        )
        launched_info = launcher.start(spec)
        assert launched_info.pid is not None

        def record(current: jobs.JobState) -> None:
            if current.pid is None:
                current.pid, current.pid_start = launched_info.pid, launched_info.pid_start

        jobs.update_job_state(path, record)
        final = jobs.read_job_state(path)
        launched.append(final)
        return final

    yield start
    for job in launched:
        pid = jobs.read_job_state(jobs.job_state_path(layout, job.id)).pid
        if pid and jobs.process_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def state_of(layout: StateLayout, job: jobs.JobState) -> jobs.JobState:
    return jobs.read_job_state(jobs.job_state_path(layout, job.id))


def test_started_job_is_detached_and_reports_progress(
    layout: StateLayout, started: Callable[..., jobs.JobState]
) -> None:
    job = started("wait")
    wait_for(lambda: (state_of(layout, job).percent or 0) >= 50)
    state = state_of(layout, job)
    assert state.phase == "install" and state.result == "running"
    assert state.detail == "package 50 of 100"
    assert state.pid is not None and jobs.process_alive(state.pid, state.pid_start)
    # Its own session, and not our child: it outlives the caller (a Juju hook).
    assert os.getsid(state.pid) == state.pid
    stat = Path(f"/proc/{state.pid}/stat").read_text()
    assert int(stat[stat.rfind(")") + 2 :].split()[1]) != os.getpid()
    wait_for(lambda: "the installer is working" in Path(state.log_path).read_text())
    assert jobs.list_jobs(layout)[0].running


def test_killed_job_is_reported_failed_with_its_log_tail(
    layout: StateLayout, started: Callable[..., jobs.JobState]
) -> None:
    job = started("wait")
    wait_for(lambda: "the installer is working" in Path(job.log_path).read_text())
    pid = state_of(layout, job).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not jobs.process_alive(pid))
    (listed,) = jobs.list_jobs(layout)
    assert listed.result == "failed"
    assert f"pid {pid} is gone" in (listed.error or "")
    assert "the installer is working" in (listed.error or "")
    assert "the installer is working" in listed.log_tail
    assert jobs.active_job(layout, "24.03-LTS-SP3", "x86_64") is None


def test_cancel_stops_the_job_which_records_cancelled(
    layout: StateLayout, started: Callable[..., jobs.JobState], tmp_path: Path
) -> None:
    record = tmp_path / "dispatched.json"
    juju_exec = tmp_path / "bin" / "juju-exec"
    juju_exec.parent.mkdir()
    juju_exec.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    juju_exec.chmod(0o755)
    os.environ["PATH"] = f"{juju_exec.parent}:{os.environ['PATH']}"
    try:
        job = started("wait", jobs.DispatchTarget("app/0", tmp_path))
        wait_for(lambda: "the installer is working" in Path(job.log_path).read_text())
        final = jobs.cancel_job(layout, state_of(layout, job), jobs.ProcessLauncher(), timeout=30)
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    assert final.result == "cancelled" and final.error == "build cancelled"
    assert final.phase == "done" and final.finished
    assert final.pid is not None and not jobs.process_alive(final.pid)
    # The job itself recorded its end (not cancel_job's fallback), then dispatched the event.
    assert "job build-24.03-LTS-SP3-x86_64-0 cancelled" in Path(final.log_path).read_text()
    assert json.loads(record.read_text()) == [
        "app/0",
        "JUJU_DISPATCH_PATH=hooks/build-finished",
        "./dispatch",
    ]


def test_cancel_kills_a_job_that_ignores_sigterm(
    layout: StateLayout, started: Callable[..., jobs.JobState]
) -> None:
    job = started("ignore-term")
    wait_for(lambda: "the installer is working" in Path(job.log_path).read_text())
    final = jobs.cancel_job(layout, state_of(layout, job), jobs.ProcessLauncher(), timeout=1)
    assert final.result == "cancelled"
    assert "stopped before it could record its end" in (final.error or "")
    assert final.pid is not None and not jobs.process_alive(final.pid)


@pytest.mark.parametrize(
    ("mode", "result", "error"),
    [
        ("succeed", "succeeded", None),
        (
            "fail",
            "failed",
            "install failed: packer build failed: stand-in failure (log: /tmp/packer.log)",
        ),
    ],
)
def test_job_records_its_result(
    layout: StateLayout,
    started: Callable[..., jobs.JobState],
    mode: str,
    result: str,
    error: str | None,
) -> None:
    job = started(mode)
    wait_for(lambda: not state_of(layout, job).running)
    final = state_of(layout, job)
    assert (final.result, final.error, final.phase) == (result, error, "done")
    if mode == "succeed":
        assert final.percent == 100 and final.image == "/images/x.tar.gz"
        assert final.log_tail == []
    else:
        assert "the installer is working" in final.log_tail
    # Transitions are visible in the log: start, progress, end.
    log = Path(final.log_path).read_text()
    assert f"job {job.id} started (pid {final.pid})" in log
    assert "install 50% package 50 of 100" in log
    assert f"job {job.id} {result}" in log
