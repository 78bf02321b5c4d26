"""Status messages for each job phase and state, and the action result dicts."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.charm_ops import NOW, make_job, make_stored_image

from openeuler_image_builder.backends.vm import packer
from openeuler_image_builder.core.errors import UsageError
from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import KVM_UNAVAILABLE
from openeuler_image_builder.pipeline import space
from openeuler_image_builder.unit import jobs as jobs_module
from openeuler_image_builder.unit.fleet import PublishedImage, UnitReport, merge_inventories
from openeuler_image_builder.unit.history import History
from openeuler_image_builder.unit.inventory import list_local_images
from openeuler_image_builder.unit.status_text import (
    RESULT_KEY,
    UnitStatus,
    active_message,
    build_started_result,
    build_status_result,
    cancel_result,
    charm_statuses,
    check_result_keys,
    failure_disables_unit,
    follow_job,
    job_line,
    job_outcome,
    list_images_result,
    unit_status,
)

UNIT = "openeuler-image-builder/0"
SP2, SP4 = "24.03-LTS-SP2", "22.03-LTS-SP4"
MINUTE = datetime.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("kind", "phase", "percent", "expected"),
    [
        ("build", "starting", None, "building 24.03-LTS-SP2 (x86_64): starting, 7m"),
        (
            "build",
            "fetch-iso",
            12.4,
            "building 24.03-LTS-SP2 (x86_64): downloading the ISO 12%, 7m",
        ),
        ("build", "render", None, "building 24.03-LTS-SP2 (x86_64): rendering the recipe, 7m"),
        ("build", "install", 45.0, "building 24.03-LTS-SP2 (x86_64): installing packages 45%, 7m"),
        ("build", "pack", 80.0, "building 24.03-LTS-SP2 (x86_64): packing the image 80%, 7m"),
        ("build", "verify", None, "building 24.03-LTS-SP2 (x86_64): verifying the image, 7m"),
        ("build", "upload", 60.0, "uploading 24.03-LTS-SP2 (x86_64): 60%, 7m"),
        (
            "build",
            "sync",
            None,
            "uploading 24.03-LTS-SP2 (x86_64): waiting for MAAS to copy it to every region, 7m",
        ),
        ("upload", "upload", 60.0, "uploading 24.03-LTS-SP2 (x86_64): 60%, 7m"),
        ("upload", "starting", None, "uploading 24.03-LTS-SP2 (x86_64): starting, 7m"),
        ("build", "some-new-phase", 5.0, "building 24.03-LTS-SP2 (x86_64): some-new-phase 5%, 7m"),
    ],
)
def test_job_line_for_each_phase(kind: str, phase: str, percent: float | None, expected: str):
    job = make_job(kind=kind, phase=phase, percent=percent)
    assert job_line(job, now=NOW) == expected


def test_job_line_elapsed_hours() -> None:
    job = make_job(started=NOW - datetime.timedelta(hours=1, minutes=12))
    assert job_line(job, now=NOW).endswith("installing packages 45%, 1h12m")


def status(**kwargs) -> UnitStatus:
    defaults = {"unit_name": UNIT, "arch": "x86_64", "jobs": [], "images": [], "now": NOW}
    return unit_status(**{**defaults, **kwargs})


def test_running_job_is_maintenance_with_queue_and_share(tmp_path: Path) -> None:
    history = History(tmp_path / "h.json")
    history.sync_queue([SP4, "20.03-LTS-SP4"], "x86_64", [], "d", now=NOW)
    result = status(
        jobs=[make_job()],
        history=history,
        share=[SP2, SP4, "20.03-LTS-SP4"],
        units=3,
        configured=[SP2, SP4, "20.03-LTS-SP4", "24.03-LTS-SP1"],
    )
    assert result == UnitStatus(
        "maintenance",
        "building 24.03-LTS-SP2 (x86_64): installing packages 45%, 7m; 2 queued"
        " [share: 24.03-LTS-SP2, 22.03-LTS-SP4, 20.03-LTS-SP4 of 4 releases, 3 units]",
    )


def test_several_running_jobs_are_counted() -> None:
    result = status(jobs=[make_job(), make_job(SP4, kind="upload", phase="upload")])
    assert result.message.endswith("(+1 more job)")


def test_ready_in_maas_with_date(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, SP2, uploaded=True)
    images = list_local_images(ops_layout)
    assert status(images=images, configured=[SP2], share=[SP2]) == UnitStatus(
        "active", "ready: 24.03-LTS-SP2 in MAAS (2026-11-27)"
    )


def test_ready_lists_local_only_images_too(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, SP2, uploaded=True)
    make_stored_image(ops_layout, SP4, built_at=NOW - 3 * 24 * 60 * MINUTE)
    images = list_local_images(ops_layout)
    result = status(images=images, configured=[SP2, SP4], share=[SP2, SP4])
    assert result.message == (
        "ready: 24.03-LTS-SP2 in MAAS (2026-11-27); 22.03-LTS-SP4 (2026-11-24) built, not in MAAS"
    )


def test_ready_with_different_dates(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, SP2, uploaded=True)
    make_stored_image(ops_layout, SP4, uploaded=True, built_at=NOW - 24 * 60 * MINUTE)
    images = list_local_images(ops_layout)
    result = status(images=images, share=[SP4, SP2], configured=[SP4, SP2])
    assert (
        result.message == "ready: 22.03-LTS-SP4 (2026-11-26), 24.03-LTS-SP2 (2026-11-27) in MAAS"
    )


def failed_history(tmp_path: Path, error: str, release: str = SP2) -> History:
    history = History(tmp_path / "h.json")
    history.record_finished(make_job(release, result="failed", error=error))
    return history


def test_failed_build_is_active_with_summary_and_log_action(tmp_path: Path) -> None:
    history = failed_history(tmp_path, "install failed: anaconda stopped (log: /var/log/x.log)")
    result = status(history=history, configured=[SP2], share=[SP2])
    assert result.level == "active"
    assert result.message == (
        "build of 24.03-LTS-SP2 (x86_64) failed: install failed: anaconda stopped "
        "(log: /var/log/x.log); for the log run "
        "'juju run openeuler-image-builder/0 build-status release=24.03-LTS-SP2'"
    )


@pytest.mark.parametrize(
    "error",
    [
        "KVM unavailable: deploy on bare metal or a VM with nested virtualisation",
        "not enough disk space in /var/lib/openeuler-image-builder: 12.0 GiB missing",
        "setup-host failed: apt could not install: qemu-system-x86",
    ],
)
def test_failure_that_disables_the_unit_is_blocked(tmp_path: Path, error: str) -> None:
    assert failure_disables_unit(error)
    result = status(history=failed_history(tmp_path, error), share=[SP2])
    assert result.level == "blocked"


def test_ordinary_failures_do_not_block() -> None:
    assert not failure_disables_unit("fetch-iso failed: https://x/ answered HTTP 404")
    assert not failure_disables_unit(None)


def test_long_errors_are_shortened(tmp_path: Path) -> None:
    result = status(history=failed_history(tmp_path, "x" * 500), share=[SP2])
    assert "x" * 119 + "…" in result.message
    assert "x" * 121 not in result.message


def test_a_later_success_clears_the_failure(tmp_path: Path, ops_layout: StateLayout) -> None:
    history = failed_history(tmp_path, "boom")
    history.record_finished(
        make_job(result="succeeded", started=NOW + 20 * MINUTE, finished=NOW + 40 * MINUTE)
    )
    make_stored_image(ops_layout, SP2)
    result = status(history=history, images=list_local_images(ops_layout), share=[SP2])
    assert result.message.startswith("ready: ")


def test_a_running_job_wins_over_a_failure(tmp_path: Path) -> None:
    result = status(history=failed_history(tmp_path, "boom"), jobs=[make_job(SP4)])
    assert result.level == "maintenance"


def test_a_unit_that_cannot_build_is_blocked_even_while_a_job_runs() -> None:
    statuses = charm_statuses(
        install_error="",
        tools_installed=True,
        kvm_usable=False,
        schedule_error="",
        maas=[],
        work=status(jobs=[make_job()]),
        maas_text="no MAAS configured",
    )
    assert statuses[0] == UnitStatus("blocked", KVM_UNAVAILABLE)
    assert statuses[1].level == "maintenance"


def test_queued_without_running_job(tmp_path: Path) -> None:
    history = History(tmp_path / "h.json")
    history.sync_queue([SP2], "x86_64", [], "d", now=NOW)
    assert status(history=history, share=[SP2], configured=[SP2]) == UnitStatus(
        "maintenance", "queued: 24.03-LTS-SP2"
    )


def test_a_build_that_could_not_start_is_shown(tmp_path: Path) -> None:
    history = History(tmp_path / "h.json")
    history.sync_queue([SP2], "x86_64", [], "d", now=NOW)
    item = history.next_build([])
    assert item is not None
    history.hold(item, "KVM unavailable: deploy on bare metal or set accelerator=tcg (slow)")
    result = status(history=history, share=[SP2], configured=[SP2])
    assert result == UnitStatus(
        "blocked",
        "could not start the build of 24.03-LTS-SP2 (x86_64): KVM unavailable: deploy on bare "
        "metal or set accelerator=tcg (slow)",
    )
    history.held.clear()
    history.sync_queue([SP2], "x86_64", [], "d")
    item = history.next_build([])
    assert item is not None
    history.hold(item, "an image of 24.03-LTS-SP2 x86_64 built with the same settings exists")
    assert status(history=history, share=[SP2]).level == "active"


def test_idle_messages() -> None:
    assert status().message == "idle: no images; set releases or run build-image"
    none_for_me = status(share=[], units=3, configured=[SP2])
    assert none_for_me.message == (
        "idle: no releases assigned to this unit [share: none of 1 releases, 3 units]"
    )


# ---- action results --------------------------------------------------------------------------


def all_keys_valid(result: dict) -> None:
    check_result_keys(result)
    for key, value in result.items():
        assert RESULT_KEY.match(key)
        if isinstance(value, dict):
            all_keys_valid(value)


def test_build_status_result(tmp_path: Path) -> None:
    history = History(tmp_path / "h.json")
    failed = make_job(SP4, result="failed", error="install failed: x", started=NOW - 60 * MINUTE)
    history.record_finished(failed)
    history.sync_queue(["20.03-LTS-SP4"], "x86_64", [], "d", now=NOW)
    running = make_job(SP2)
    running = dataclasses.replace(running, detail="package 120 of 412")
    tails = {running.id: ["line 1", "line 2"], failed.id: ["error: x"]}
    result = build_status_result(
        [running, failed],
        history=history,
        log_tail=lambda job: tails[job.id],
        status=UnitStatus("maintenance", "building"),
        now=NOW,
    )
    all_keys_valid(result)
    assert result["running"] == "1"
    first, second = result["jobs"]["01"], result["jobs"]["02"]
    assert first["phase"] == "install" and first["percent"] == "45"
    assert first["elapsed"] == "7m"
    assert first["result"] == "running"
    assert first["detail"] == "package 120 of 412"
    assert first["log-tail"] == "line 1\nline 2"
    assert first["log-path"] == running.log_path
    assert second["result"] == "failed" and second["error"] == "install failed: x"
    assert second["log-tail"] == "error: x"
    assert result["history"]["01"]["result"] == "failed"
    assert result["history"]["01"]["duration"] == "20m"
    assert result["queue"] == "20.03-LTS-SP4 (x86_64, missing)"
    assert result["status"] == "building"


def test_build_status_result_for_one_release_and_nothing() -> None:
    result = build_status_result([make_job(SP4)], release=SP2, now=NOW)
    assert result == {"running": "0", "jobs": f"none for {SP2}"}


def test_build_status_with_real_job_files_and_log_tail(ops_layout: StateLayout) -> None:
    job = make_job(
        SP2,
        result="failed",
        error="pack failed: no root partition",
        layout=ops_layout,
        log_lines=[f"log line {i}" for i in range(30)],
    )
    listed = jobs_module.list_jobs(ops_layout)
    assert [j.id for j in listed] == [job.id]
    result = build_status_result(listed, log_tail=jobs_module.log_tail, now=NOW)
    tail = result["jobs"]["01"]["log-tail"].splitlines()
    assert tail[-1] == "log line 29" and len(tail) == 20


def test_build_started_result() -> None:
    job = make_job(SP2, phase="starting", percent=None)
    result = build_started_result(job, unit_name=UNIT, upload_note="auto-upload is on")
    all_keys_valid(result)
    assert result["job-id"] == job.id
    assert "follow it with 'juju status' or" in result["message"]
    assert f"juju run {UNIT} build-status release={SP2}" in result["message"]
    waited = build_started_result(job, unit_name=UNIT, upload_note="x", wait=True)
    assert "follow it" not in waited["message"]


@dataclasses.dataclass
class FakeMaasImage:
    name: str
    architecture: str
    title: str
    size: int
    complete: bool
    subarches: tuple[str, ...]
    last_deployed: None = None


def test_list_images_result(ops_layout: StateLayout) -> None:
    make_stored_image(ops_layout, SP2, uploaded=True)
    local = list_local_images(ops_layout)
    fleet = merge_inventories(
        {
            UNIT: UnitReport.from_local("x86_64", True, local),
            "openeuler-image-builder/1": UnitReport(
                "x86_64", True, (PublishedImage(SP4, "x86_64", "c" * 64, 5, "2026-11-20", False),)
            ),
        }
    )
    maas = [
        dataclasses.asdict(
            FakeMaasImage(
                "custom/openeuler-24.03-lts-sp2", "amd64/generic", "T", 9, True, ("generic",)
            )
        )
    ]
    result = list_images_result(local=local, fleet=fleet, maas=maas)
    all_keys_valid(result)
    assert result["local"]["01"]["release"] == SP2
    assert result["local"]["01"]["uploaded"] == "true"
    assert result["application"]["01"]["release"] == SP4
    assert result["application"]["01"]["unit"] == "openeuler-image-builder/1"
    assert result["application"]["02"]["unit"] == UNIT
    row = result["maas"]["01"]
    assert row["name"] == "custom/openeuler-24.03-lts-sp2"
    assert row["last-deployed"] == ""
    assert row["complete"] == "true"
    assert row["subarches"] == "generic"


def test_list_images_result_empty_and_maas_error() -> None:
    result = list_images_result(local=[], maas_error="MAAS is not configured: set maas-url")
    assert result == {"local": "none", "maas-error": "MAAS is not configured: set maas-url"}


@pytest.mark.parametrize(
    "bad",
    [{"Bad": "x"}, {"a_b": "x"}, {"ok": {"-x": "y"}}, {"stdout": "x"}, {"n": 1}],
)
def test_check_result_keys_refuses_what_juju_refuses(bad: dict) -> None:
    with pytest.raises(ValueError):
        check_result_keys(bad)


def test_many_rows_stay_in_order() -> None:
    jobs = [
        make_job(SP2, result="failed", error="e", started=NOW - i * MINUTE, job_id=f"j{i:03d}")
        for i in range(12)
    ]
    result = build_status_result(jobs, recent=12, now=NOW)
    assert list(result["jobs"]) == [f"{i:02d}" for i in range(1, 13)]
    assert result["jobs"]["12"]["id"] == "j011"


# ---- follow_job (build-image wait=true) ------------------------------------------------------


def test_follow_job_logs_phase_changes_and_the_result() -> None:
    base = make_job(SP2, phase="fetch-iso", percent=0.0)
    states = [
        base,
        dataclasses.replace(base, percent=2.0),  # small move: no line
        dataclasses.replace(base, percent=50.0),
        dataclasses.replace(base, phase="install", percent=10.0),
        dataclasses.replace(
            base,
            phase="done",
            percent=100.0,
            result="succeeded",
            finished=(NOW + 30 * MINUTE).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
    ]
    reads = iter(states)
    logged: list[str] = []
    sleeps: list[float] = []
    final = follow_job(
        lambda: next(reads), logged.append, poll_interval=2, sleep=sleeps.append, now=lambda: NOW
    )
    assert final.result == "succeeded"
    assert logged == [
        "building 24.03-LTS-SP2 (x86_64): downloading the ISO 0%, 7m",
        "building 24.03-LTS-SP2 (x86_64): downloading the ISO 50%, 7m",
        "building 24.03-LTS-SP2 (x86_64): installing packages 10%, 7m",
        "build of 24.03-LTS-SP2 (x86_64) succeeded after 37m",
    ]
    assert sleeps == [2, 2, 2, 2]


def test_follow_job_reports_failure_and_gives_up_at_timeout() -> None:
    failed = make_job(SP2, result="failed", error="install failed: boom")
    logged: list[str] = []
    assert follow_job(lambda: failed, logged.append, sleep=lambda s: None).result == "failed"
    assert logged == ["build of 24.03-LTS-SP2 (x86_64) failed after 20m: install failed: boom"]
    clock = iter([0.0, 5.0, 11.0])
    logged.clear()
    running = make_job(SP2)
    result = follow_job(
        lambda: running,
        logged.append,
        timeout=10,
        sleep=lambda s: None,
        clock=lambda: next(clock),
        now=lambda: NOW,
    )
    assert result.result == "running"
    assert logged[-1].startswith(f"stopped waiting; job {running.id} goes on")


def _error_of(call: Callable[[], object]) -> str:
    with pytest.raises(UsageError) as raised:
        call()
    return str(raised.value)


def test_the_pipelines_own_tool_and_space_errors_block_the_unit(tmp_path: Path) -> None:
    """The patterns follow the messages space.py and packer.py really raise."""
    missing_packer = _error_of(
        lambda: packer.detect_packer_version(str(tmp_path / "no-packer"), 5)
    )
    no_space = _error_of(
        lambda: space.check_disk_space(
            [space.SpaceNeed("disk image", tmp_path, 10**12)], free_space=lambda _: 10**9
        )
    )
    for error in (missing_packer, no_space, f"install failed: {missing_packer}"):
        assert failure_disables_unit(error), error


def test_charm_statuses_list_every_problem_and_the_work() -> None:
    ready = UnitStatus("active", "ready: 24.03-LTS-SP4 in MAAS (2026-11-27)")
    base = {
        "install_error": "",
        "tools_installed": True,
        "kvm_usable": True,
        "schedule_error": "",
        "maas": [],
        "work": ready,
        "maas_text": "MAAS 10.0.0.2 holds 2 of our images",
    }
    assert charm_statuses(**base) == [  # type: ignore[arg-type]
        UnitStatus(
            "active",
            "ready: 24.03-LTS-SP4 in MAAS (2026-11-27); MAAS 10.0.0.2 holds 2 of our images",
        )
    ]
    waiting = UnitStatus("waiting", "MAAS unreachable at http://10.0.0.2:5240/MAAS (...)")
    statuses = charm_statuses(  # type: ignore[arg-type]
        **{
            **base,
            "install_error": "apt failed",
            "kvm_usable": False,
            "schedule_error": "rebuild-schedule not applied: bad",
            "maas": [waiting],
            "work": UnitStatus("maintenance", "building 24.03-LTS-SP4 (x86_64): starting, 0s"),
        }
    )
    assert statuses == [
        UnitStatus(
            "blocked",
            "installing the build tools failed: apt failed; retrying at each update-status",
        ),
        UnitStatus("blocked", KVM_UNAVAILABLE),
        UnitStatus("blocked", "rebuild-schedule not applied: bad"),
        waiting,
        UnitStatus("maintenance", "building 24.03-LTS-SP4 (x86_64): starting, 0s"),
    ]
    not_installed = charm_statuses(**{**base, "tools_installed": False})  # type: ignore[arg-type]
    assert not_installed[0] == UnitStatus("maintenance", "waiting to install the build tools")


@pytest.mark.parametrize(
    ("work", "expected"),
    [
        ("idle: no images; set releases or run build-image", "ready: no MAAS configured"),
        (
            "build of 24.03-LTS-SP4 (x86_64) failed: boom",
            "build of 24.03-LTS-SP4 (x86_64) failed: boom",
        ),
        (
            "ready: 24.03-LTS-SP4 (2026-11-27) built, not in MAAS",
            "ready: 24.03-LTS-SP4 (2026-11-27) built, not in MAAS; no MAAS configured",
        ),
    ],
)
def test_active_message_adds_what_maas_holds(work: str, expected: str) -> None:
    assert active_message(work, "no MAAS configured") == expected


def test_job_outcome_and_cancel_result() -> None:
    failed = make_job(SP2, result="failed", error="install failed: boom")
    assert job_outcome(failed) == f"build of {SP2} (x86_64) failed: install failed: boom"
    cancelled = make_job(SP2, kind="upload", result="cancelled")
    assert job_outcome(cancelled) == f"upload of {SP2} (x86_64) cancelled"
    assert cancel_result(cancelled) == {
        "job-id": cancelled.id,
        "result": "cancelled",
        "message": f"upload of {SP2} (x86_64): cancelled",
    }
