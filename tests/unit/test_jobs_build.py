"""The real thing around the install: ``build`` run as a background job by the ProcessLauncher
(the CLI with ``--job-state``), and the ``build``/``jobs`` commands in the foreground, with the
stand-in packer and a loopback mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.http_server import LoopbackHTTPServer
from fixtures.maas_double import MaasDouble, write_test_image
from fixtures.standin_packer import StandinPacker

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.paths import STATE_DIR_ENV, StateLayout
from openeuler_image_builder.pipeline import images
from openeuler_image_builder.unit import jobs

RELEASE = catalogue.resolve("24.03-LTS-SP3")


@pytest.fixture
def setup(
    tmp_path: Path,
    http_server: LoopbackHTTPServer,
    standin_packer: StandinPacker,
    installed_disk_factory: Callable[..., Path],
) -> Iterator[dict[str, object]]:
    """A state dir, a mirror holding the ISO, a settings file, and the stand-in's environment.

    Jobs still running at the end (a failed test) are killed.
    """
    iso_dir = http_server.root / f"openEuler-{RELEASE.name}" / "ISO" / "x86_64"
    iso_dir.mkdir(parents=True)
    name = RELEASE.iso_name("x86_64")
    data = b"stand-in DVD\n" * 1000
    (iso_dir / name).write_bytes(data)
    (iso_dir / f"{name}.sha256sum").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps({"mirror_url": http_server.url, "disk_size": "4G", "accelerator": "tcg"})
    )
    iso = tmp_path / name
    iso.write_bytes(data)
    layout = StateLayout(tmp_path / "state")
    yield {
        "layout": layout,
        "settings": settings,
        "iso": iso,
        "sha256": hashlib.sha256(data).hexdigest(),
        "disk": installed_disk_factory("x86_64"),
        "standin": standin_packer,
    }
    for job in jobs.list_jobs(layout):
        if job.running and job.pid and jobs.process_alive(job.pid, job.pid_start):
            os.killpg(job.pid, signal.SIGKILL)


def job_environment(setup: dict[str, object], mode: str = "ok") -> dict[str, str]:
    standin: StandinPacker = setup["standin"]  # type: ignore[assignment]
    return {
        jobs.PACKER_ENV: str(standin.packer),
        **standin.environment(mode, STANDIN_DISK_SOURCE=str(setup["disk"])),
    }


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def installing(setup: dict[str, object], job: jobs.JobState) -> bool:
    """Whether the installer has started installing packages (QEMU runs)."""
    current = state(setup, job)
    return current.phase == "install" and (current.percent or 0) > 0


def start(setup: dict[str, object], mode: str = "ok", **options: object) -> jobs.JobState:
    return jobs.start_build_job(
        setup["layout"],  # type: ignore[arg-type]
        RELEASE,
        "x86_64",
        upload=False,
        launcher=jobs.ProcessLauncher(),
        settings_file=setup["settings"],  # type: ignore[arg-type]
        environment=job_environment(setup, mode),
        **options,  # type: ignore[arg-type]
    )


def state(setup: dict[str, object], job: jobs.JobState) -> jobs.JobState:
    return jobs.read_job_state(jobs.job_state_path(setup["layout"], job.id))  # type: ignore[arg-type]


def test_build_job_runs_to_success_through_every_phase(setup: dict[str, object]) -> None:
    layout: StateLayout = setup["layout"]  # type: ignore[assignment]
    job = start(setup)
    phases = []
    deadline = time.monotonic() + 120
    while (current := state(setup, job)).running:
        assert time.monotonic() < deadline, "the job did not finish"
        if not phases or phases[-1] != current.phase:
            phases.append(current.phase)
        time.sleep(0.02)
    assert current.result == "succeeded", current.error
    assert current.phase == "done" and current.percent == 100 and current.finished
    assert current.image and Path(current.image).is_file()
    image = images.newest_image(layout, RELEASE.name, "x86_64")
    assert image is not None and str(image.tarball) == current.image
    assert current.sha256 == image.sha256 and current.output_dir == str(image.directory)
    assert {"fetch-iso", "install", "pack"} <= set(current.durations)
    phases.append(current.phase)
    assert phases[0] == "starting" and phases[-1] == "done" and "install" in phases
    log = Path(current.log_path).read_text()
    for line in (
        f"job {job.id} started",
        "install 0% starting the installer VM",
        "pack",
        f"image: {current.image}",
        f"job {job.id} succeeded",
    ):
        assert line in log
    assert list(layout.work.iterdir()) == []
    # The state file was written atomically: no temporary file is left beside it.
    assert [p.name for p in layout.jobs.iterdir() if p.name.endswith(".tmp")] == []


def test_killed_build_job_is_failed_and_leaves_no_packer_or_qemu(setup: dict[str, object]) -> None:
    layout: StateLayout = setup["layout"]  # type: ignore[assignment]
    standin: StandinPacker = setup["standin"]  # type: ignore[assignment]
    job = start(setup, "hang")
    wait_for(lambda: installing(setup, job))
    pid = state(setup, job).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The kernel tells Packer (PR_SET_PDEATHSIG); Packer stops its QEMU.
    wait_for(lambda: standin.processes() == [], timeout=30)
    (listed,) = jobs.list_jobs(layout)
    assert listed.result == "failed"
    assert f"pid {pid} is gone" in (listed.error or "")
    assert any("install" in line for line in listed.log_tail)
    # The next build of the release removes the killed build's work directory and succeeds.
    assert list(layout.work.iterdir()) != []
    again = start(setup, force=True)
    wait_for(lambda: not state(setup, again).running, timeout=120)
    assert state(setup, again).result == "succeeded"
    assert list(layout.work.iterdir()) == []


def test_cancelled_build_job_cleans_up_and_says_cancelled(setup: dict[str, object]) -> None:
    layout: StateLayout = setup["layout"]  # type: ignore[assignment]
    standin: StandinPacker = setup["standin"]  # type: ignore[assignment]
    job = start(setup, "hang")
    wait_for(lambda: installing(setup, job))
    output_dir = state(setup, job).output_dir
    assert output_dir and Path(output_dir).is_dir()
    result = subprocess.run(
        [sys.executable, "-m", "openeuler_image_builder", "jobs", "cancel", job.id, "--json"],
        env={**os.environ, STATE_DIR_ENV: str(layout.root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout)
    assert final["result"] == "cancelled" and final["error"] == "build cancelled"
    assert standin.processes() == []
    assert list(layout.work.iterdir()) == []
    assert not Path(output_dir).exists()
    assert images.list_stored_images(layout) == []


def test_second_job_is_refused_while_the_first_runs(setup: dict[str, object]) -> None:
    first = start(setup, "hang")
    with pytest.raises(jobs.JobAlreadyRunning, match=first.id):
        start(setup)
    jobs.cancel_job(setup["layout"], first, jobs.ProcessLauncher())  # type: ignore[arg-type]


def cli(
    setup: dict[str, object], *args: str, mode: str = "ok"
) -> subprocess.CompletedProcess[str]:
    layout: StateLayout = setup["layout"]  # type: ignore[assignment]
    env = {**os.environ, STATE_DIR_ENV: str(layout.root), **job_environment(setup, mode)}
    return subprocess.run(
        [sys.executable, "-m", "openeuler_image_builder", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_build_command_in_the_foreground(setup: dict[str, object], tmp_path: Path) -> None:
    result = cli(
        setup,
        "build",
        "--release",
        "24.03-LTS-SP3",
        "--arch",
        "x86_64",
        "--iso",
        str(setup["iso"]),
        "--sha256",
        str(setup["sha256"]),
        "--accelerator",
        "tcg",
        "--disk-size",
        "4G",
        "--output",
        str(tmp_path / "out"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["image"] == str(tmp_path / "out" / "openeuler-24.03-LTS-SP3-x86_64.tar.gz")
    assert Path(data["manifest"]).is_file() and data["upload"] is None


def test_build_command_failure_is_one_line_and_exit_1(setup: dict[str, object]) -> None:
    result = cli(
        setup,
        "build",
        "--release",
        "24.03-LTS-SP3",
        "--arch",
        "x86_64",
        "--iso",
        str(setup["iso"]),
        "--sha256",
        str(setup["sha256"]),
        "--accelerator",
        "tcg",
        "--disk-size",
        "4G",
        "--timeout",
        "90m",
        mode="fail",
    )
    assert result.returncode == 1
    # One error line (the stand-in ISO has no volume label: a warning may precede it).
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert errors[0].startswith("error: install failed: packer build failed: Error launching VM")
    assert errors[0].endswith(".packer.log)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--release", "25.03"], "unknown openEuler release '25.03'"),
        (
            ["--release", "24.03", "--disk-size", "1G"],
            "--disk-size '1G' is invalid (smaller than 4G)",
        ),
        (["--release", "24.03", "--timeout", "soon"], "'soon' is not a duration"),
        (["--release", "24.03", "--sha256", "ab"], "--sha256 goes with --iso"),
        (
            ["--release", "24.03", "--accelerator", "tcg", "--upload"],
            "--upload needs the MAAS URL",
        ),
    ],
)
def test_build_command_bad_usage_is_one_line_and_exit_2(
    setup: dict[str, object], args: list[str], message: str
) -> None:
    result = cli(setup, "build", "--arch", "x86_64", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_jobs_command_lists_jobs(setup: dict[str, object]) -> None:
    job = start(setup)
    wait_for(lambda: not state(setup, job).running, timeout=120)
    listed = cli(setup, "jobs", "--json")
    assert listed.returncode == 0
    (entry,) = json.loads(listed.stdout)
    assert entry["id"] == job.id and entry["result"] == "succeeded"
    text = cli(setup, "jobs", "--release", "24.03-LTS-SP3")
    assert text.stdout.startswith(f"{job.id}  succeeded done 100%")
    missing = cli(setup, "jobs", "cancel", "build-nope")
    assert missing.returncode == 2 and f"known jobs (newest first): {job.id}" in missing.stderr
    done = cli(setup, "jobs", "cancel", "--release", "24.03-LTS-SP3")
    assert done.returncode == 2 and "no running job of 24.03-LTS-SP3" in done.stderr


def test_upload_job_uploads_the_newest_stored_image(
    setup: dict[str, object], maas_double: MaasDouble, tmp_path: Path
) -> None:
    layout: StateLayout = setup["layout"]  # type: ignore[assignment]
    layout.ensure()
    directory = images.next_image_dir(layout, RELEASE.name, "x86_64")
    tarball = write_test_image(directory, release=RELEASE.name, size=5 * 1024 * 1024 + 7)
    layout.maas_api_key_file.write_text(maas_double.admin_key + "\n")
    layout.maas_api_key_file.chmod(0o600)
    settings = tmp_path / "maas-settings.json"
    settings.write_text(json.dumps({"maas_url": maas_double.url}))
    job = jobs.start_upload_job(
        layout,
        RELEASE,
        "x86_64",
        title="openEuler test",
        launcher=jobs.ProcessLauncher(),
        settings_file=settings,
    )
    assert job.image == str(tarball)
    wait_for(lambda: not state(setup, job).running, timeout=120)
    final = state(setup, job)
    assert final.result == "succeeded", final.error
    assert final.uploaded and final.maas_name == "custom/openeuler-24.03-lts-sp3"
    stored = maas_double.find("openeuler-24.03-lts-sp3", "amd64/generic")
    assert stored is not None and maas_double.content(stored["id"]) == tarball.read_bytes()
    record = json.loads((directory / images.UPLOAD_RECORD).read_text())
    assert record["status"] == "uploaded" and record["sha256"] == final.sha256
    # The key never reached the job's command line or log.
    assert maas_double.admin_key not in Path(final.log_path).read_text()
