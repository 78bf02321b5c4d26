"""Background jobs: state files, the systemd launcher's exact commands, starting, refusing,
dead-job detection through systemd, cancelling, and the build-finished dispatch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from fixtures.job_environment import environment_file_of, job_environment

from openeuler_image_builder.core import catalogue
from openeuler_image_builder.core.errors import StepFailed, UsageError
from openeuler_image_builder.core.paths import STATE_DIR_ENV, StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.pipeline import images, locks
from openeuler_image_builder.unit import jobs

RELEASE = catalogue.resolve("24.03-LTS-SP3")


class FakeSystemd:
    """Records the systemd-run/systemctl argv it is given and answers like systemd would."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.active: dict[str, int] = {}  # unit -> MainPID
        self.fail_start: str | None = None
        self.broken = False

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        assert timeout > 0
        if argv[0] == "systemd-run":
            if self.fail_start:
                return subprocess.CompletedProcess(argv, 1, "", self.fail_start)
            unit = next(a for a in argv if a.startswith("--unit=")).split("=", 1)[1]
            self.active[unit] = 0
            return subprocess.CompletedProcess(argv, 0, "", "")
        if self.broken:
            return subprocess.CompletedProcess(
                argv, 1, "", "System has not been booted with systemd as init system (PID 1)."
            )
        if argv[1] == "show":
            unit = argv[-1]
            if unit in self.active:
                out = f"ActiveState=active\nMainPID={self.active[unit]}\n"
            else:
                out = "ActiveState=inactive\nMainPID=0\n"
            return subprocess.CompletedProcess(argv, 0, out, "")
        if argv[1] == "stop":
            self.active.pop(argv[-1], None)
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    return layout


def test_state_round_trip_ignores_unknown_keys_and_defaults_missing_ones(tmp_path: Path) -> None:
    state = jobs.JobState(
        id="build-24.03-LTS-SP3-x86_64-20261127T070512Z",
        kind="build",
        release="24.03-LTS-SP3",
        arch="x86_64",
        started="2026-11-27T07:05:12Z",
        log_path="/var/log/x.log",
        percent=45.5,
        phase="install",
    )
    path = tmp_path / "job.json"
    jobs.write_job_state(path, state)
    data = json.loads(path.read_text())
    assert data["phase"] == "install" and data["percent"] == 45.5 and data["result"] == "running"
    assert data["updated"] is not None and data["elapsed"] is not None
    data["from_a_newer_version"] = True
    del data["uploaded"]
    path.write_text(json.dumps(data))
    again = jobs.read_job_state(path)
    assert again.id == state.id and again.percent == 45.5 and again.uploaded is False


def test_unreadable_state_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable"):
        jobs.read_job_state(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"id": "x"}')
    with pytest.raises(UsageError, match="no 'kind'"):
        jobs.read_job_state(tmp_path / "partial.json")


def test_unit_name_is_kind_release_arch() -> None:
    assert (
        jobs.unit_name("build", RELEASE, "x86_64")
        == "openeuler-image-builder-build-24.03-lts-sp3-x86_64"
    )
    assert (
        jobs.unit_name("upload", "22.03-LTS-SP4", "aarch64")
        == "openeuler-image-builder-upload-22.03-lts-sp4-aarch64"
    )


def test_systemd_run_command_is_exact(tmp_path: Path) -> None:
    spec = jobs.LaunchSpec(
        argv=("/charm/venv/bin/python", "-m", "openeuler_image_builder", "build"),
        unit="openeuler-image-builder-build-24.03-lts-sp3-x86_64",
        log_path=Path("/var/lib/openeuler-image-builder/logs/job.log"),
        working_directory=Path("/var/lib/openeuler-image-builder"),
        environment={
            "OPENEULER_IMAGE_BUILDER_STATE_DIR": "/var/lib/x",
            "HTTP_PROXY": "http://p:3128",
        },
        description="openeuler-image-builder build of 24.03-LTS-SP3 x86_64",
        environment_file=Path("/var/lib/openeuler-image-builder/jobs/job.env"),
    )
    assert jobs.SystemdLauncher(stop_timeout=90).command(spec) == [
        "systemd-run",
        "--unit=openeuler-image-builder-build-24.03-lts-sp3-x86_64",
        "--description=openeuler-image-builder build of 24.03-LTS-SP3 x86_64",
        "--collect",
        "--quiet",
        "--service-type=exec",
        "--working-directory=/var/lib/openeuler-image-builder",
        "--property=StandardOutput=append:/var/lib/openeuler-image-builder/logs/job.log",
        "--property=StandardError=append:/var/lib/openeuler-image-builder/logs/job.log",
        "--property=KillMode=control-group",
        "--property=TimeoutStopSec=90s",
        "--property=EnvironmentFile=/var/lib/openeuler-image-builder/jobs/job.env",
        "--",
        "/charm/venv/bin/python",
        "-m",
        "openeuler_image_builder",
        "build",
    ]
    # Never on the command line (world-readable): a proxy URL may carry credentials.
    without_file = dataclasses.replace(spec, environment_file=None)
    with pytest.raises(ValueError, match="needs an environment file"):
        jobs.SystemdLauncher().command(without_file)


def test_environment_file_quotes_values_for_systemd() -> None:
    text = jobs.SystemdLauncher.environment_file_text(
        {"HTTPS_PROXY": 'http://user:p"a\\ss@proxy:3128', "A_B": "x y"}
    )
    assert text == 'A_B="x y"\nHTTPS_PROXY="http://user:p\\"a\\\\ss@proxy:3128"\n'
    for bad in ({"BAD NAME": "x"}, {"OK": "two\nlines"}):
        with pytest.raises(ValueError, match="cannot pass"):
            jobs.SystemdLauncher.environment_file_text(bad)


@pytest.mark.parametrize("name", ["MAAS_API_KEY", "maas_api_key", "GITHUB_TOKEN", "DB_PASSWORD"])
def test_secrets_are_never_put_in_a_job_environment(name: str) -> None:
    with pytest.raises(ValueError, match="secrets reach jobs only through a root-only file"):
        jobs.check_environment({name: "x"})
    jobs.check_environment({"MAAS_API_KEY_FILE": "/var/lib/x/secrets/maas-api-key"})


def test_start_build_job_with_systemd(layout: StateLayout, tmp_path: Path) -> None:
    systemd = FakeSystemd()
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"disk_size": 10240, "maas_url": "http://maas:5240/MAAS"}))
    layout.maas_api_key_file.write_text("a:b:c\n")
    layout.maas_api_key_file.chmod(0o600)
    state = jobs.start_build_job(
        layout,
        RELEASE,
        "x86_64",
        upload=True,
        launcher=jobs.SystemdLauncher(runner=systemd),
        dispatch=jobs.DispatchTarget("openeuler-image-builder/0", Path("/var/lib/juju/charm")),
        settings_file=settings_file,
        environment={"HTTP_PROXY": "http://proxy:3128"},
        python="/charm/venv/bin/python",
    )
    assert state.result == "running" and state.phase == "starting"
    assert state.unit == "openeuler-image-builder-build-24.03-lts-sp3-x86_64"
    assert state.launcher == "systemd" and state.upload_requested
    assert state.dispatch_unit == "openeuler-image-builder/0"
    assert state.id.startswith("build-24.03-LTS-SP3-x86_64-")
    assert state.log_path == str(layout.logs / f"{state.id}.log")
    path = jobs.job_state_path(layout, state.id)
    assert jobs.read_job_state(path) == state
    (run,) = systemd.calls
    separator = run.index("--")
    assert run[separator + 1 :] == [
        "/charm/venv/bin/python",
        "-m",
        "openeuler_image_builder",
        "build",
        "--release",
        "24.03-LTS-SP3",
        "--arch",
        "x86_64",
        "--job-state",
        str(path),
        "--settings",
        str(settings_file),
        "--upload",
    ]
    assert not any(a.startswith("--setenv") for a in run)
    environment_file = environment_file_of(run)
    assert environment_file == path.with_suffix(".env")
    assert stat.S_IMODE(environment_file.stat().st_mode) == 0o600
    assert "a:b:c" not in environment_file.read_text()
    setenv = job_environment(run)
    assert setenv[STATE_DIR_ENV] == str(layout.root)
    assert setenv["MAAS_API_KEY_FILE"] == str(layout.maas_api_key_file)
    assert setenv["HTTP_PROXY"] == "http://proxy:3128"
    assert "a:b:c" not in " ".join(run)
    # The package is importable by the job's python.
    assert Path(setenv["PYTHONPATH"], "openeuler_image_builder", "__main__.py").is_file()


def test_second_build_is_refused_naming_the_running_job(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    first = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    with pytest.raises(jobs.JobAlreadyRunning) as refused:
        jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    assert refused.value.job.id == first.id
    assert first.id in str(refused.value)
    # Another architecture is free.
    jobs.start_build_job(layout, RELEASE, "aarch64", upload=False, launcher=launcher)
    # Once the unit is gone, the dead job no longer blocks a new one.
    del systemd.active[first.unit or ""]
    second = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    assert second.id != first.id
    assert jobs.read_job_state(jobs.job_state_path(layout, first.id)).result == "failed"


def test_foreground_build_holding_the_lock_blocks_a_job(layout: StateLayout) -> None:
    launcher = jobs.SystemdLauncher(runner=FakeSystemd())
    with (
        locks.build_lock(layout, RELEASE.name, "x86_64"),
        pytest.raises(UsageError, match=f"pid {os.getpid()}"),
    ):
        jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    assert jobs.list_jobs(layout) == []


def test_upload_without_maas_is_refused_before_starting(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    with pytest.raises(UsageError, match="set maas-url"):
        jobs.start_build_job(layout, RELEASE, "x86_64", upload=True, launcher=launcher)
    assert systemd.calls == [] and jobs.list_jobs(layout) == []


def test_failed_start_is_recorded_and_reported(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    systemd.fail_start = "Failed to start transient service unit: Unit already exists."
    with pytest.raises(StepFailed, match="Unit already exists"):
        jobs.start_build_job(
            layout, RELEASE, "x86_64", upload=False, launcher=jobs.SystemdLauncher(runner=systemd)
        )
    (job,) = jobs.list_jobs(layout)
    assert job.result == "failed" and "Unit already exists" in (job.error or "")


def write_image(
    layout: StateLayout, release: str, arch: str, stamp: str, **manifest: object
) -> Path:
    directory = images.store_dir(layout, release, arch) / stamp
    directory.mkdir(parents=True)
    (directory / images.tarball_name(release, arch)).write_bytes(b"tarball")
    data = {"release": release, "arch": arch, "sha256": "0" * 64, "size": 7, **manifest}
    (directory / images.manifest_name(release, arch)).write_text(json.dumps(data))
    return directory


def test_equal_image_needs_force(layout: StateLayout) -> None:
    write_image(
        layout,
        RELEASE.name,
        "x86_64",
        "20260101T000000Z",
        settings={"include_updates": True, "extra_packages": []},
        built_at="2026-01-01T00:00:00Z",
    )
    launcher = jobs.SystemdLauncher(runner=FakeSystemd())
    with pytest.raises(UsageError, match="use force to build again"):
        jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    state = jobs.start_build_job(
        layout, RELEASE, "x86_64", upload=False, force=True, launcher=launcher
    )
    assert state.running


def test_image_with_other_settings_builds_without_force(
    layout: StateLayout, tmp_path: Path
) -> None:
    write_image(
        layout,
        RELEASE.name,
        "x86_64",
        "20260101T000000Z",
        settings={"include_updates": True, "extra_packages": []},
    )
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"extra_packages": "tmux"}))
    launcher = jobs.SystemdLauncher(runner=FakeSystemd())
    assert jobs.start_build_job(
        layout, RELEASE, "x86_64", upload=False, launcher=launcher, settings_file=settings_file
    ).running


def test_dead_unit_is_reported_failed_with_its_log_tail(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    state = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    Path(state.log_path).write_text("job started\ninstall 40% package 120 of 300\nKilled\n")
    (listed,) = jobs.list_jobs(layout, launchers={"systemd": launcher})
    assert listed.running  # the unit is active
    del systemd.active[state.unit or ""]
    (listed,) = jobs.list_jobs(layout, launchers={"systemd": launcher})
    assert listed.result == "failed" and listed.finished
    assert listed.error is not None
    assert "unit openeuler-image-builder-build-24.03-lts-sp3-x86_64 is gone" in listed.error
    assert "log tail: job started | install 40% package 120 of 300 | Killed" in listed.error
    assert listed.log_tail[-1] == "Killed"
    # Recorded in the file: the next reader sees it without asking systemd again.
    calls = len(systemd.calls)
    assert jobs.list_jobs(layout, launchers={"systemd": launcher})[0].result == "failed"
    assert len(systemd.calls) == calls


def test_find_job_reads_one_job_and_checks_only_its_liveness(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    launchers: dict[str, jobs.Launcher] = {"systemd": launcher}
    older = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    other = jobs.start_build_job(layout, RELEASE, "aarch64", upload=False, launcher=launcher)
    calls = len(systemd.calls)
    assert jobs.find_job(layout, older.id, launchers=launchers).running
    assert len(systemd.calls) == calls + 1  # one liveness check: the other job is not asked
    del systemd.active[older.unit or ""]
    found = jobs.find_job(layout, older.id, launchers=launchers)
    assert found.result == "failed" and found.error is not None and "is gone" in found.error
    assert jobs.read_job_state(jobs.job_state_path(layout, older.id)).result == "failed"
    with pytest.raises(UsageError) as refused:
        jobs.find_job(layout, "no-such-job", launchers=launchers)
    prefix = "no job 'no-such-job': known jobs (newest first): "
    assert str(refused.value).startswith(prefix)
    assert sorted(str(refused.value)[len(prefix) :].split(", ")) == sorted([other.id, older.id])
    with pytest.raises(UsageError, match=r"no job '\.\./jobs/"):
        jobs.find_job(layout, f"../jobs/{older.id}", launchers=launchers)


def test_unit_reused_by_another_pid_means_the_job_died(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    state = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    jobs.update_job_state(jobs.job_state_path(layout, state.id), lambda s: setattr(s, "pid", 1234))
    systemd.active[state.unit or ""] = 1234
    assert jobs.list_jobs(layout, launchers={"systemd": launcher})[0].running
    systemd.active[state.unit or ""] = 999
    assert jobs.list_jobs(layout, launchers={"systemd": launcher})[0].result == "failed"


def test_unknown_liveness_leaves_the_job_running(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    systemd.broken = True
    assert jobs.list_jobs(layout, launchers={"systemd": launcher})[0].running


def test_cancel_with_systemd_stops_the_unit(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    state = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    final = jobs.cancel_job(layout, state, launcher, timeout=1)
    assert [
        "systemctl",
        "stop",
        "openeuler-image-builder-build-24.03-lts-sp3-x86_64",
    ] in systemd.calls
    # The fake unit never ran the job, so nothing recorded its end: cancel_job did.
    assert final.result == "cancelled"
    assert "stopped before it could record its end" in (final.error or "")
    # Cancelling a finished job changes nothing.
    assert jobs.cancel_job(layout, final, launcher).result == "cancelled"


def test_upload_job_needs_a_stored_image(layout: StateLayout, tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"maas_url": "http://maas:5240/MAAS"}))
    layout.maas_api_key_file.write_text("a:b:c\n")
    layout.maas_api_key_file.chmod(0o600)
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    with pytest.raises(UsageError, match=r"no image of 24\.03-LTS-SP3 x86_64 .*build one first"):
        jobs.start_upload_job(
            layout, RELEASE, "x86_64", launcher=launcher, settings_file=settings_file
        )
    write_image(layout, RELEASE.name, "x86_64", "20260101T000000Z")
    newest = write_image(layout, RELEASE.name, "x86_64", "20260202T000000Z")
    state = jobs.start_upload_job(
        layout,
        RELEASE,
        "x86_64",
        name="custom/oe",
        title="OE",
        launcher=launcher,
        settings_file=settings_file,
        python="/py",
    )
    assert state.kind == "upload" and state.image == str(
        newest / images.tarball_name(RELEASE.name, "x86_64")
    )
    assert state.unit == "openeuler-image-builder-upload-24.03-lts-sp3-x86_64"
    run = systemd.calls[-1]
    assert run[run.index("--") + 1 :] == [
        "/py",
        "-m",
        "openeuler_image_builder",
        "jobs",
        "run-upload",
        "--job-state",
        str(jobs.job_state_path(layout, state.id)),
        "--settings",
        str(settings_file),
        "--name",
        "custom/oe",
        "--title",
        "OE",
    ]
    with pytest.raises(jobs.JobAlreadyRunning):
        jobs.start_upload_job(
            layout, RELEASE, "x86_64", launcher=launcher, settings_file=settings_file
        )


def test_job_starter_gives_every_job_the_same_launcher_dispatch_settings_and_environment(
    layout: StateLayout, tmp_path: Path
) -> None:
    systemd = FakeSystemd()
    settings_file, rebuild_file = tmp_path / "settings.json", tmp_path / "rebuild.json"
    for path in (settings_file, rebuild_file):
        path.write_text(json.dumps({"maas_url": "http://maas:5240/MAAS"}))
    layout.maas_api_key_file.write_text("a:b:c\n")
    starter = jobs.JobStarter(
        layout,
        jobs.SystemdLauncher(runner=systemd),
        dispatch=jobs.DispatchTarget("openeuler-image-builder/0", Path("/charm")),
        settings_file=settings_file,
        environment={"HTTP_PROXY": "http://proxy:3128"},
    )
    other = catalogue.resolve("22.03-LTS-SP4")
    build = starter.build(RELEASE, "x86_64", upload=False, settings_file=rebuild_file)
    write_image(layout, other.name, "x86_64", "20260101T000000Z")
    upload = starter.upload(other, "x86_64", name="custom/oe")
    for job, settings in ((build, rebuild_file), (upload, settings_file)):
        assert job.dispatch_unit == "openeuler-image-builder/0"
        run = next(c for c in systemd.calls if f"--unit={job.unit}" in c)
        assert run[run.index("--settings") + 1] == str(settings)
        assert job_environment(run)["HTTP_PROXY"] == "http://proxy:3128"
    assert {job.id for job in starter.list_jobs()} == {build.id, upload.id}


def test_cancel_running_stops_every_running_job(layout: StateLayout) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    first = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    second = jobs.start_build_job(
        layout, catalogue.resolve("22.03"), "x86_64", upload=False, launcher=launcher
    )
    stopped = jobs.cancel_running(layout, launcher, timeout=1)
    assert {job.id for job in stopped} == {first.id, second.id}
    assert {job.result for job in jobs.list_jobs(layout, launchers={"systemd": launcher})} == {
        "cancelled"
    }
    assert jobs.cancel_running(layout, launcher, timeout=1) == []


def test_cancel_running_goes_on_when_a_job_cannot_be_stopped(
    layout: StateLayout, caplog: pytest.LogCaptureFixture
) -> None:
    systemd = FakeSystemd()
    launcher = jobs.SystemdLauncher(runner=systemd)
    job = jobs.start_build_job(layout, RELEASE, "x86_64", upload=False, launcher=launcher)
    systemd.broken = True  # systemctl fails: liveness unknown, stop refused
    assert jobs.cancel_running(layout, launcher, timeout=1) == []
    assert f"could not stop job {job.id}" in caplog.text


def test_settings_file_round_trip_and_rewritten_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    settings = Settings(extra_packages=("tmux", "vim"), maas_url="http://maas:5240/MAAS")
    assert jobs.write_settings_file(path, settings)
    assert jobs.load_settings_file(path) == settings
    assert not jobs.write_settings_file(path, settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert jobs.write_settings_file(path, Settings())


def test_job_reporter_throttles_but_never_drops_a_phase_change(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    jobs.write_job_state(path, jobs.JobState(id="j", kind="build", release="r", arch="x86_64"))
    reporter = jobs.JobReporter(path, interval=3600)
    reporter("fetch-iso", 10, "downloading")
    reporter("fetch-iso", 50, "downloading")  # within the interval: held back
    assert jobs.read_job_state(path).percent == 10
    reporter("install", 5, "package 1 of 20")
    state = jobs.read_job_state(path)
    assert (state.phase, state.percent, state.detail) == ("install", 5, "package 1 of 20")
    reporter.close()


def test_job_reporter_writes_a_held_back_report_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    jobs.write_job_state(path, jobs.JobState(id="j", kind="build", release="r", arch="x86_64"))
    reporter = jobs.JobReporter(path, interval=0.3)
    reporter("install", 5, "package 1 of 20")
    reporter("install", 47.5, "package 10 of 20")  # then nothing more for a while
    assert jobs.read_job_state(path).percent == 5
    deadline = time.monotonic() + 5
    while jobs.read_job_state(path).percent != 47.5:
        assert time.monotonic() < deadline, "the held-back report was never written"
        time.sleep(0.05)
    # After the job's end is recorded, a late report changes nothing.
    jobs.end_job(path, "succeeded")
    reporter("install", 60, "late")
    reporter.close()
    assert jobs.read_job_state(path).phase == "done"


def fake_juju_exec(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "juju-exec"
    script.write_text(f"#!{sys.executable}\nimport os, sys, json, time\n{body}\n")
    script.chmod(0o755)
    return script


def test_dispatch_runs_juju_exec_in_the_charm_dir(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    juju_exec = fake_juju_exec(
        tmp_path,
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}, open({str(record)!r}, 'w'))",
    )
    charm = tmp_path / "charm"
    charm.mkdir()
    job = jobs.JobState(
        id="j",
        kind="build",
        release="r",
        arch="x86_64",
        dispatch_unit="openeuler-image-builder/0",
        dispatch_charm_dir=str(charm),
    )
    assert jobs.dispatch_finished(job, juju_exec=str(juju_exec))
    assert json.loads(record.read_text()) == {
        "argv": [
            "openeuler-image-builder/0",
            "JUJU_DISPATCH_PATH=hooks/build-finished",
            "./dispatch",
        ],
        "cwd": str(charm),
    }


def test_dispatch_is_a_no_op_outside_juju(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = jobs.JobState(id="j", kind="build", release="r", arch="x86_64")
    assert not jobs.dispatch_finished(job, juju_exec="/nonexistent")  # no target
    monkeypatch.setenv("PATH", str(tmp_path))
    job.dispatch_unit, job.dispatch_charm_dir = "app/0", str(tmp_path)
    assert not jobs.dispatch_finished(job)  # no juju-exec on PATH


def test_dispatch_never_blocks_for_long(tmp_path: Path) -> None:
    juju_exec = fake_juju_exec(tmp_path, "time.sleep(60)")
    job = jobs.JobState(
        id="j",
        kind="build",
        release="r",
        arch="x86_64",
        dispatch_unit="app/0",
        dispatch_charm_dir=str(tmp_path),
    )
    assert not jobs.dispatch_finished(job, juju_exec=str(juju_exec), timeout=0.5)
    failing = fake_juju_exec(tmp_path, "sys.exit('ERROR machine lock')")
    assert not jobs.dispatch_finished(job, juju_exec=str(failing))


def test_log_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {n}\n" for n in range(100_000)) + "\r\nlast\n")
    job = jobs.JobState(id="j", kind="build", release="r", arch="x86_64", log_path=str(log))
    assert jobs.log_tail(job, 3) == ["line 99998", "line 99999", "last"]
    assert jobs.log_tail(jobs.JobState(id="j", kind="build", release="r", arch="x86_64")) == []
