"""Fault end-to-end: builds killed during the install, and an installer that never powers off.

Real ``packer build`` + QEMU (TCG) runs of the stand-in installer (a stand-in for anaconda,
docs/testing.md), stopped the three ways a build ends badly: SIGTERM to the CLI build, the
charm's cancel path (``jobs.cancel_job`` on a job started by the ``ProcessLauncher``), and the
install timeout. Each time nothing may be left behind: no QEMU process, mount, loop device,
work or temporary directory, and a previous image in the output directory stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.local_mirror import LocalMirror
from fixtures.standin_iso import E2E_ARCH, E2E_RELEASE
from fixtures.standin_runs import (
    BUILD_TIMEOUT,
    DISK_SIZE,
    E2EBuild,
    build_environment,
    cli_command,
    leftovers,
    run_cli_build,
    write_settings_file,
)

from e2e.standin.builder import StandinIso
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.unit import jobs

pytestmark = pytest.mark.e2e

# How long to wait for the stand-in's first "Installing <pkg> (N/M)" line on the console.
INSTALL_START_TIMEOUT = 300


def _fingerprint(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def _serial_logs(state_dir: Path) -> list[Path]:
    return sorted(StateLayout(state_dir).work.glob("*/recipe/serial.log"))


def _wait_for_install(
    state_dir: Path,
    process: subprocess.Popen[str] | None = None,
    job: tuple[StateLayout, str] | None = None,
) -> str:
    """Wait until the stand-in installer prints its second package line; returns the log."""
    deadline = time.monotonic() + INSTALL_START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the build ended before the install started: {process.returncode}")
        if job is not None:
            state = jobs.find_job(*job)
            if not state.running:
                tail = "\n".join(jobs.log_tail(state, 30))
                pytest.fail(f"the job ended before the install started: {state.error}\n{tail}")
        for log in _serial_logs(state_dir):
            text = log.read_text(errors="replace")
            if "Installing setup." in text:
                return text
        time.sleep(1)
    pytest.fail(f"no package line on the installer console within {INSTALL_START_TIMEOUT} s")


def _assert_nothing_left(state_dir: Path, pids: list[int]) -> None:
    # QEMU may take a moment to be reaped after Packer reports it stopped.
    deadline = time.monotonic() + 30
    found = leftovers(state_dir, pids)
    while not found.empty() and time.monotonic() < deadline:
        time.sleep(1)
        found = leftovers(state_dir, pids)
    assert found.empty(), found


def test_sigterm_during_install_stops_qemu_and_keeps_the_previous_image(
    e2e_cli_build: E2EBuild,
    standin_iso_factory: Callable[..., StandinIso],
    e2e_base_dir: Path,
) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    output_dir = e2e_cli_build.output_dir
    before = _fingerprint(output_dir)
    slow = standin_iso_factory("slow")
    state_dir = e2e_base_dir / "s"
    command = [
        *cli_command(),
        "build",
        "--release",
        E2E_RELEASE.name,
        "--arch",
        E2E_ARCH,
        "--iso",
        str(slow.path),
        "--sha256",
        slow.sha256,
        "--accelerator",
        "tcg",
        "--output",
        str(output_dir),
        "--disk-size",
        DISK_SIZE,
        "--timeout",
        "10m",
        # Offline: no update repository (its default is the official mirror, unreachable here).
        "--no-updates",
    ]
    process = subprocess.Popen(
        command,
        env=build_environment(state_dir, None, None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_install(state_dir, process)
        assert leftovers(state_dir).qemu_processes, "QEMU should be running during the install"
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "error: build cancelled"
    _assert_nothing_left(state_dir, [process.pid])
    assert _fingerprint(output_dir) == before
    assert (
        json.loads(e2e_cli_build.manifest_path.read_text())["sha256"]
        == before[e2e_cli_build.tarball.name]
    )


def test_cancelled_job_stops_the_install_and_records_cancelled(
    local_mirror_factory: Callable[..., LocalMirror],
    e2e_base_dir: Path,
) -> None:
    mirror = local_mirror_factory("slow")
    base = e2e_base_dir / "c"
    base.mkdir()
    layout = StateLayout(base / "s")
    layout.ensure()
    settings_file = write_settings_file(base, mirror.url)
    launcher = jobs.ProcessLauncher()
    state = jobs.start_build_job(
        layout, E2E_RELEASE, E2E_ARCH, upload=False, launcher=launcher, settings_file=settings_file
    )
    try:
        _wait_for_install(layout.root, job=(layout, state.id))
        # The installer's console lines reach the job's state file as install progress.
        deadline = time.monotonic() + 30
        running = jobs.find_job(layout, state.id)
        while not (running.percent or 0) > 5 and time.monotonic() < deadline:
            time.sleep(1)
            running = jobs.find_job(layout, state.id)
        assert running.result == "running"
        assert running.phase == "install"
        assert (running.percent or 0) > 5, running
        assert running.pid is not None
        final = jobs.cancel_job(layout, running, launcher, timeout=120)
    finally:
        current = jobs.find_job(layout, state.id)
        if current.running:
            jobs.cancel_job(layout, current, launcher, timeout=30)
    assert final.result == "cancelled"
    assert final.error is not None and "cancelled" in final.error
    assert final.finished is not None
    tail = jobs.log_tail(final, 20)
    assert tail, "the job's log is empty"
    assert any("cancelled" in line for line in tail), tail
    assert running.pid is not None
    _assert_nothing_left(layout.root, [running.pid])
    # A cancelled build leaves no image in the store and no running job.
    assert not list(layout.images.rglob("*.tar.gz"))
    assert jobs.active_job(layout, E2E_RELEASE.name, E2E_ARCH) is None


def test_installer_that_never_powers_off_fails_at_the_timeout(
    e2e_cli_build: E2EBuild,
    standin_iso_factory: Callable[..., StandinIso],
    e2e_base_dir: Path,
) -> None:
    assert e2e_cli_build.returncode == 0, e2e_cli_build.stderr[-3000:]
    output_dir = e2e_cli_build.output_dir
    before = _fingerprint(output_dir)
    hanging = standin_iso_factory("never-poweroff")
    state_dir = e2e_base_dir / "t"
    arguments = [
        "--release",
        E2E_RELEASE.name,
        "--arch",
        E2E_ARCH,
        "--iso",
        str(hanging.path),
        "--sha256",
        hanging.sha256,
        "--accelerator",
        "tcg",
        "--output",
        str(output_dir),
        "--disk-size",
        DISK_SIZE,
        "--timeout",
        "45s",
        "--no-updates",
    ]
    started = time.monotonic()
    completed, _seconds, pid = run_cli_build(
        arguments, state_dir=state_dir, maas=None, key_file=None
    )
    assert time.monotonic() - started < BUILD_TIMEOUT
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    (message,) = lines
    assert message.startswith(
        "error: install failed: install did not finish within 45s: the installer never "
        "powered off; see "
    ), message
    serial_log = Path(message.split("; see ", 1)[1].split(" (log: ", 1)[0])
    serial = serial_log.read_text(errors="replace")
    # The install itself finished; only the power-off never came.
    assert "Storing configuration files and kickstarts" in serial
    assert "the never-poweroff variant" in serial
    _assert_nothing_left(state_dir, [pid])
    assert _fingerprint(output_dir) == before
