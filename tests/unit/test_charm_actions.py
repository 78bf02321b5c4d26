"""ops.testing tests of every action path: success, each bad parameter, already building,
no MAAS, wait=true with log lines; jobs start through the real ``jobs.SystemdLauncher`` whose
``systemd-run``/``systemctl`` calls are recorded (tests/fixtures/charm_env.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.charm_env import CharmEnv, job_id_of
from fixtures.charm_ops import make_stored_image
from fixtures.job_environment import job_environment
from fixtures.maas_double import MaasDouble
from ops import testing

from openeuler_image_builder.unit import fleet, history, inventory, jobs
from openeuler_image_builder.unit.jobs import control

UNIT = "openeuler-image-builder/0"


def maas_state(env: CharmEnv, double: MaasDouble, **fields: object) -> testing.State:
    secret = testing.Secret(tracked_content={"key": double.admin_key})
    return env.state(
        secrets={secret},
        config={"maas-api-key": secret.id, "maas-url": double.url},
        **fields,  # type: ignore[arg-type]
    )


def run_action(
    env: CharmEnv, state: testing.State, action: str, **params: object
) -> tuple[testing.Context, testing.State]:
    ctx = env.ctx()
    out = ctx.run(ctx.on.action(action, params=params), state)
    return ctx, out


def failure(env: CharmEnv, state: testing.State, action: str, **params: object) -> str:
    ctx = env.ctx()
    with pytest.raises(testing.ActionFailed) as caught:
        ctx.run(ctx.on.action(action, params=params), state)
    return caught.value.message


# --- build-image -----------------------------------------------------------------------------


def test_build_image_starts_a_background_job(charm_env: CharmEnv) -> None:
    ctx, _ = run_action(charm_env, charm_env.state(), "build-image", release="22.03")

    results = ctx.action_results or {}
    (argv,) = charm_env.runner.started()
    job_id = job_id_of(argv)
    assert results["job-id"] == job_id
    assert results["release"] == "22.03-LTS-SP4"  # the alias resolved
    assert results["arch"] == "x86_64"
    assert results["upload"].startswith("auto-upload is on but MAAS is not configured")
    assert results["message"] == (
        f"build of 22.03-LTS-SP4 (x86_64) started as job {job_id}; follow it with "
        f"'juju status' or 'juju run {UNIT} build-status release=22.03-LTS-SP4'"
    )
    # The exact transient unit systemd would run.
    assert "--unit=openeuler-image-builder-build-22.03-lts-sp4-x86_64" in argv
    assert "--collect" in argv
    command = argv[argv.index("--") + 1 :]
    assert command[1:7] == [
        "-m",
        "openeuler_image_builder",
        "build",
        "--release",
        "22.03-LTS-SP4",
        "--arch",
    ]
    assert "--upload" not in command
    assert command[command.index("--settings") + 1] == str(charm_env.layout.root / "settings.json")
    assert "src" in job_environment(argv)["PYTHONPATH"]
    # The job will tell the charm it finished.
    state = jobs.read_job_state(charm_env.layout.jobs / f"{job_id}.json")
    assert state.dispatch_unit == UNIT
    assert state.dispatch_event == "build-finished"


def test_build_image_uploads_by_default_when_maas_is_configured(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    ctx, _ = run_action(
        charm_env, maas_state(charm_env, maas_double), "build-image", release="24.03"
    )
    (argv,) = charm_env.runner.started()
    assert "--upload" in argv
    assert (ctx.action_results or {})["upload"] == (
        "auto-upload is on: the job uploads the image to MAAS"
    )


def test_build_image_upload_false_overrides_auto_upload(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    run_action(
        charm_env, maas_state(charm_env, maas_double), "build-image", release="24.03", upload=False
    )
    (argv,) = charm_env.runner.started()
    assert "--upload" not in argv


def test_unknown_release_fails_listing_valid_names(charm_env: CharmEnv) -> None:
    message = failure(charm_env, charm_env.state(), "build-image", release="23.09")
    assert message.startswith("Error in action parameters:")
    assert "23.09" in message
    assert "24.03-LTS-SP2" in message  # the valid names are listed
    assert charm_env.runner.argvs == []


def test_upload_true_without_maas_fails_naming_the_config(charm_env: CharmEnv) -> None:
    message = failure(charm_env, charm_env.state(), "build-image", release="24.03", upload=True)
    assert message.startswith(
        "upload=true needs MAAS: set maas-url (or integrate with maas-region)"
    )
    assert "set maas-api-key to a Juju secret" in message
    assert charm_env.runner.argvs == []


def test_second_build_of_a_running_release_fails_with_the_job_id(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    run_action(charm_env, state, "build-image", release="24.03")
    running = job_id_of(charm_env.runner.started()[0])
    message = failure(charm_env, state, "build-image", release="24.03-LTS-SP4", force=True)
    assert f"already running: job {running}" in message
    assert "cancel-build release=24.03-LTS-SP4" in message
    assert len(charm_env.runner.started()) == 1


def test_existing_image_needs_force(charm_env: CharmEnv) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    message = failure(charm_env, charm_env.state(), "build-image", release="24.03")
    assert "built with the same settings exists" in message
    assert "use force" in message
    run_action(charm_env, charm_env.state(), "build-image", release="24.03", force=True)
    assert len(charm_env.runner.started()) == 1


def test_build_image_without_kvm_fails(charm_env: CharmEnv) -> None:
    charm_env.kvm_missing()
    message = failure(charm_env, charm_env.state(), "build-image", release="24.03")
    assert message.startswith("KVM unavailable: deploy on bare metal")


def test_build_image_before_install_fails(charm_env: CharmEnv) -> None:
    message = failure(charm_env, charm_env.state(installed=False), "build-image", release="24.03")
    assert message == "the build tools are not installed yet: see 'juju status'"


def test_build_image_with_invalid_config_fails(charm_env: CharmEnv) -> None:
    state = charm_env.state(config={"disk-size": "1G"})
    message = failure(charm_env, state, "build-image", release="24.03")
    assert message.startswith("the charm config is invalid: config option disk-size='1G'")


def test_launcher_failure_fails_the_action(charm_env: CharmEnv) -> None:
    charm_env.runner.fail_start = "Failed to start transient service unit: Unit exists"
    message = failure(charm_env, charm_env.state(), "build-image", release="24.03")
    assert message == (
        "start job failed: systemd-run exited with 1: Failed to start transient service "
        "unit: Unit exists"
    )
    assert charm_env.job_states()[0].result == "failed"


def _drive(
    path: Path, steps: list[tuple[str, float]], result: jobs.JobResult, **end: object
) -> None:
    """What a job does: progress in its state file, then its end."""

    def run() -> None:
        for phase, percent in steps:
            time.sleep(0.05)

            def change(job: jobs.JobState, phase: str = phase, percent: float = percent) -> None:
                job.phase, job.percent = phase, percent

            jobs.update_job_state(path, change)
        time.sleep(0.05)
        jobs.end_job(path, result, **end)  # type: ignore[arg-type]

    threading.Thread(target=run, name="fake-job", daemon=True).start()


def test_build_image_wait_streams_progress_and_returns_the_result(charm_env: CharmEnv) -> None:
    steps = [("fetch-iso", 50.0), ("install", 10.0), ("install", 60.0), ("pack", 100.0)]
    charm_env.runner.on_start = lambda path: _drive(
        path, steps, "succeeded", image="/state/images/x.tar.gz", sha256="ab" * 32
    )
    ctx, _ = run_action(charm_env, charm_env.state(), "build-image", release="24.03", wait=True)

    logs = ctx.action_logs
    assert logs[0].startswith("build of 24.03-LTS-SP4 (x86_64) started as job")
    assert any(
        line.startswith("building 24.03-LTS-SP4 (x86_64): installing packages 60%")
        for line in logs
    )
    assert any(
        line.startswith("building 24.03-LTS-SP4 (x86_64): packing the image") for line in logs
    )
    assert logs[-1].startswith("build of 24.03-LTS-SP4 (x86_64) succeeded after")
    results = ctx.action_results or {}
    assert results["job"]["result"] == "succeeded"
    assert results["job"]["sha256"] == "ab" * 32
    assert "follow it with" not in results["message"]


def test_build_image_wait_fails_when_the_build_fails(charm_env: CharmEnv) -> None:
    charm_env.runner.on_start = lambda path: _drive(
        path, [("install", 5.0)], "failed", error="install failed: no space (log: /l)"
    )
    ctx = charm_env.ctx()
    with pytest.raises(testing.ActionFailed) as caught:
        ctx.run(
            ctx.on.action("build-image", params={"release": "24.03", "wait": True}),
            charm_env.state(),
        )
    assert caught.value.message == (
        "build of 24.03-LTS-SP4 (x86_64) failed: install failed: no space (log: /l)"
    )
    assert ctx.action_logs[-1].startswith("build of 24.03-LTS-SP4 (x86_64) failed after")


# --- build-status / cancel-build -------------------------------------------------------------


def test_build_status_reports_running_and_recent_jobs(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    run_action(charm_env, state, "build-image", release="24.03")
    first = Path(
        charm_env.runner.started()[0][charm_env.runner.started()[0].index("--job-state") + 1]
    )
    Path(jobs.read_job_state(first).log_path).write_text("line one\nline two\n")
    ctx, _ = run_action(charm_env, state, "build-status")
    results = ctx.action_results or {}
    assert results["running"] == "1"
    row = results["jobs"]["01"]
    assert row["release"] == "24.03-LTS-SP4"
    assert row["result"] == "running"
    assert row["log-tail"] == "line one\nline two"
    assert results["status"].startswith("building 24.03-LTS-SP4 (x86_64): starting")

    ctx, _ = run_action(charm_env, state, "build-status", release="22.03")
    assert (ctx.action_results or {})["jobs"] == "none for 22.03-LTS-SP4"
    message = failure(charm_env, state, "build-status", release="nope")
    assert message.startswith("Error in action parameters:")


def test_build_status_reads_history_images_and_jobs_once(
    charm_env: CharmEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = charm_env.state()
    run_action(charm_env, state, "build-image", release="24.03")
    reads: list[str] = []

    def counted(name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return read(*args, **kwargs)

        return wrapper

    load = history.History.load
    monkeypatch.setattr(history.History, "load", counted("history", load))
    # The charm lists through its JobStarter, which looks ``list_jobs`` up in jobs.control;
    # callers outside the package look it up in the facade: count both.
    monkeypatch.setattr(control, "list_jobs", counted("jobs", control.list_jobs))
    monkeypatch.setattr(jobs, "list_jobs", counted("jobs", jobs.list_jobs))
    images = inventory.list_local_images
    monkeypatch.setattr(inventory, "list_local_images", counted("images", images))
    # The action and collect-status share one read of each.
    ctx, out = run_action(charm_env, state, "build-status")
    assert (ctx.action_results or {})["running"] == "1"
    assert out.unit_status.name == "maintenance"
    assert sorted(reads) == ["history", "images", "jobs"]


def test_cancel_build_stops_the_running_job(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    run_action(charm_env, state, "build-image", release="24.03")
    job_id = job_id_of(charm_env.runner.started()[0])
    ctx, out = run_action(charm_env, state, "cancel-build", release="24.03")
    assert ctx.action_results == {
        "job-id": job_id,
        "result": "cancelled",
        "message": "build of 24.03-LTS-SP4 (x86_64): cancelled",
    }
    assert out.unit_status.name != "maintenance"  # the status reads the jobs after the cancel
    assert ["systemctl", "stop", "openeuler-image-builder-build-24.03-lts-sp4-x86_64"] in (
        charm_env.runner.argvs
    )


def test_cancel_build_without_a_running_job_fails(charm_env: CharmEnv) -> None:
    state = charm_env.state()
    run_action(charm_env, state, "build-image", release="24.03")
    message = failure(charm_env, state, "cancel-build", release="22.03")
    assert message == (
        "no build or upload of 22.03-LTS-SP4 (x86_64) is running; running: "
        "24.03-LTS-SP4 (x86_64, build)"
    )


# --- upload-image ----------------------------------------------------------------------------


def test_upload_image_without_maas_fails_naming_the_config(charm_env: CharmEnv) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    message = failure(charm_env, charm_env.state(), "upload-image", release="24.03")
    assert message.startswith("upload needs MAAS: set maas-url (or integrate with maas-region)")


def test_upload_image_without_a_local_image_fails(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    message = failure(
        charm_env, maas_state(charm_env, maas_double), "upload-image", release="24.03"
    )
    assert message.startswith("no image of 24.03-LTS-SP4 x86_64 in")
    assert message.endswith("build one first")


def test_upload_image_starts_an_upload_job(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    ctx, _ = run_action(
        charm_env,
        maas_state(charm_env, maas_double),
        "upload-image",
        release="24.03",
        name="custom/openeuler-test",
        title="openEuler test",
    )
    (argv,) = charm_env.runner.started()
    command = argv[argv.index("--") + 1 :]
    assert command[3:6] == ["jobs", "run-upload", "--job-state"]
    assert command[command.index("--name") + 1] == "custom/openeuler-test"
    assert command[command.index("--title") + 1] == "openEuler test"
    results = ctx.action_results or {}
    assert results["upload"] == "to MAAS at 127.0.0.1"
    assert results["message"].startswith("upload of 24.03-LTS-SP4 (x86_64) started as job upload-")


def test_upload_image_bad_name_fails(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    message = failure(
        charm_env,
        maas_state(charm_env, maas_double),
        "upload-image",
        release="24.03",
        name="Ubuntu/Noble",
    )
    assert "is not a MAAS image name: use custom/<name> or rhel/<name>" in message


# --- list-images / delete-image --------------------------------------------------------------


def test_list_images_shows_local_application_and_maas(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    maas_double.add_uploaded("openeuler-22.03-lts-sp4", "amd64/generic", b"x" * 10)
    peer_image = fleet.PublishedImage(
        release="22.03-LTS-SP4",
        arch="x86_64",
        sha256="cd" * 32,
        size=10,
        built_at="2026-11-20T01:00:00Z",
        uploaded=True,
    )
    peers = testing.PeerRelation(
        "builders",
        peers_data={
            1: {fleet.UNIT_REPORT_KEY: fleet.UnitReport("x86_64", True, (peer_image,)).to_json()}
        },
    )
    ctx, _ = run_action(
        charm_env, maas_state(charm_env, maas_double, relations={peers}), "list-images"
    )
    results = ctx.action_results or {}
    assert results["local"]["01"]["release"] == "24.03-LTS-SP4"
    application = results["application"]
    by_release = {row["release"]: row for row in application.values()}
    assert by_release["22.03-LTS-SP4"]["unit"] == "openeuler-image-builder/1"
    assert by_release["24.03-LTS-SP4"]["unit"] == UNIT
    assert results["maas"]["01"]["name"] == "custom/openeuler-22.03-lts-sp4"
    assert "maas-error" not in results


def test_list_images_without_maas_says_so(charm_env: CharmEnv) -> None:
    ctx, _ = run_action(charm_env, charm_env.state(), "list-images")
    results = ctx.action_results or {}
    assert results["local"] == "none"
    assert results["maas-error"] == "no MAAS configured, images are kept locally"


def test_delete_image_locally(charm_env: CharmEnv) -> None:
    tarball = make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    ctx, _ = run_action(charm_env, charm_env.state(), "delete-image", release="24.03")
    assert not tarball.exists()
    assert (ctx.action_results or {})["deleted-local"] == str(tarball)


def test_delete_image_that_is_not_there_fails(charm_env: CharmEnv) -> None:
    message = failure(charm_env, charm_env.state(), "delete-image", release="24.03")
    assert message == "no local image of 24.03-LTS-SP4 (x86_64) on this unit; local images: none"


def test_delete_image_from_maas(charm_env: CharmEnv, maas_double: MaasDouble) -> None:
    make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    maas_double.add_uploaded("openeuler-24.03-lts-sp4", "amd64/generic", b"x" * 10)
    ctx, _ = run_action(
        charm_env,
        maas_state(charm_env, maas_double),
        "delete-image",
        release="24.03",
        **{"from-maas": True},
    )
    assert (ctx.action_results or {})["deleted-from-maas"] == "custom/openeuler-24.03-lts-sp4"
    assert maas_double.find("custom/openeuler-24.03-lts-sp4", "amd64/generic") is None
    assert maas_double.find("openeuler-24.03-lts-sp4", "amd64/generic") is None


def test_delete_from_maas_without_maas_fails(charm_env: CharmEnv) -> None:
    message = failure(
        charm_env, charm_env.state(), "delete-image", release="24.03", **{"from-maas": True}
    )
    assert message.startswith("from-maas=true needs MAAS:")


def test_delete_refused_while_an_upload_uses_the_image(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    tarball = make_stored_image(charm_env.layout, "24.03-LTS-SP4")
    state = maas_state(charm_env, maas_double)
    run_action(charm_env, state, "upload-image", release="24.03")
    upload_id = job_id_of(charm_env.runner.started()[0])
    message = failure(charm_env, state, "delete-image", release="24.03")
    assert message == (
        f"24.03-LTS-SP4 (x86_64) is in use by running upload job {upload_id}; "
        "run cancel-build release=24.03-LTS-SP4 or wait for it to finish"
    )
    assert tarball.exists()


def test_delete_from_maas_only_when_this_unit_holds_no_image(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    maas_double.add_uploaded("openeuler-22.03-lts-sp4", "amd64/generic", b"x" * 10)
    ctx, _ = run_action(
        charm_env,
        maas_state(charm_env, maas_double),
        "delete-image",
        release="22.03",
        **{"from-maas": True},
    )
    results = ctx.action_results or {}
    assert results["deleted-local"] == "none"
    assert results["deleted-from-maas"] == "custom/openeuler-22.03-lts-sp4"
    assert maas_double.find("openeuler-22.03-lts-sp4", "amd64/generic") is None


def test_upload_with_a_rejected_key_fails_with_the_check_message(
    charm_env: CharmEnv, maas_double: MaasDouble
) -> None:
    secret = testing.Secret(tracked_content={"key": maas_double.unknown_key})
    state = charm_env.state(
        secrets={secret}, config={"maas-api-key": secret.id, "maas-url": maas_double.url}
    )
    ctx = charm_env.ctx()
    out = ctx.run(ctx.on.config_changed(), state)  # the check runs and fails (401)
    message = failure(charm_env, out, "build-image", release="24.03", upload=True)
    assert message.startswith(
        f"upload=true needs MAAS: MAAS at 127.0.0.1 rejected the API key in {secret.id}"
    )
    message = failure(charm_env, out, "upload-image", release="24.03")
    assert message.startswith("upload needs MAAS: MAAS at 127.0.0.1 rejected the API key")
    # Without upload=true the build still runs, and says why it will not upload.
    ctx, _ = run_action(charm_env, out, "build-image", release="24.03")
    assert (ctx.action_results or {})["upload"].startswith(
        "auto-upload is on but MAAS is not configured (MAAS at 127.0.0.1 rejected"
    )
