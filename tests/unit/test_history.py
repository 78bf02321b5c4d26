"""Build history, the per-unit build queue, holds, and the upload decision for rebuilds."""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from fixtures.charm_ops import NOW, make_job, make_stored_image

from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.core.settings import Settings
from openeuler_image_builder.unit.history import (
    History,
    QueuedBuild,
    same_package_list,
    settings_digest,
)
from openeuler_image_builder.unit.inventory import list_local_images, package_list_digest

MINUTE = datetime.timedelta(minutes=1)
SP2, SP4 = "24.03-LTS-SP2", "22.03-LTS-SP4"
DIGEST = settings_digest(Settings())


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path / "history.json")


def finished_build(
    layout: StateLayout,
    release: str = SP2,
    *,
    packages: tuple[str, ...] = ("a-1", "b-1"),
    result: str = "succeeded",
    uploaded: bool = False,
    started: datetime.datetime = NOW,
    job_id: str | None = None,
    error: str | None = None,
):
    image = sha = None
    if result == "succeeded":
        tarball = make_stored_image(layout, release, packages=packages, built_at=started)
        image, sha = str(tarball), hashlib.sha256(tarball.read_bytes()).hexdigest()
    return make_job(
        release,
        result=result,
        started=started,
        finished=started + 20 * MINUTE,
        image=image,
        sha256=sha,
        uploaded=uploaded,
        job_id=job_id,
        error=error,
    )


# ---- records ---------------------------------------------------------------------------------


def test_record_of_a_finished_build_has_every_fact(history: History, ops_layout) -> None:
    job = finished_build(ops_layout, packages=("x-1", "y-1"))
    record = history.record_finished(job)
    assert record is not None
    assert (record.release, record.arch, record.result) == (SP2, "x86_64", "succeeded")
    assert record.duration == 1200.0
    assert record.sha256 == job.sha256
    assert record.uploaded is False
    assert record.packages_digest == package_list_digest(["x-1", "y-1"])
    assert record.trigger == "user"


def test_recording_is_idempotent_and_skips_running_jobs(history: History, ops_layout) -> None:
    job = finished_build(ops_layout)
    assert history.record_finished(job) is not None
    assert history.record_finished(job) is None
    assert history.record_jobs([job, job]) == []
    assert len(history.records) == 1
    assert history.record_finished(make_job(result="running")) is None
    assert len(history.records) == 1


def test_history_survives_a_save_and_load(history: History, ops_layout) -> None:
    history.record_finished(finished_build(ops_layout, uploaded=True))
    history.sync_queue([SP4], "x86_64", [], DIGEST, now=NOW)
    history.save()
    again = History.load(history.path)
    assert again.records == history.records
    assert again.queue == history.queue
    assert again.last_uploads == history.last_uploads
    assert again.settings_digest == DIGEST
    assert oct(history.path.stat().st_mode & 0o777) == "0o644"
    # No temporary file is left beside it.
    assert sorted(p.name for p in history.path.parent.iterdir() if "history" in p.name) == [
        "history.json"
    ]


def test_keeps_only_the_last_n_records(tmp_path: Path, ops_layout) -> None:
    history = History(tmp_path / "h.json", keep=3)
    for index in range(5):
        history.record_finished(
            finished_build(ops_layout, result="failed", started=NOW + index * MINUTE, error="x")
        )
    history.save()
    kept = History.load(history.path, keep=3).records
    assert len(kept) == 3
    assert [r.started for r in kept] == sorted((r.started for r in kept), reverse=True)
    assert kept[0].started == (NOW + 4 * MINUTE).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_job_whose_record_was_dropped_is_never_recorded_again(tmp_path: Path) -> None:
    # More job files than records: the oldest job's record is dropped, its state file stays.
    history = History(tmp_path / "h.json", keep=2)
    succeeded = make_job(SP4, result="succeeded", started=NOW - 60 * MINUTE)
    failed = [
        make_job(SP2, result="failed", error="x", started=NOW + index * MINUTE)
        for index in range(2)
    ]
    assert len(history.record_jobs([succeeded, *failed])) == 3
    history.save()
    loaded = History.load(history.path, keep=2)
    assert [r.job_id for r in loaded.records] == [failed[1].id, failed[0].id]
    assert loaded.is_recorded(succeeded.id)
    loaded.hold(QueuedBuild(SP4, "x86_64", "missing", "x"), "a later failure")
    # Seen again at every hook: not a new record, so it lifts no hold, starts no upload.
    assert loaded.record_jobs([succeeded, *failed]) == []
    assert f"{SP4}/x86_64" in loaded.held
    # Once its state file is gone (retention), its id is forgotten too.
    loaded.record_jobs(failed)
    assert not loaded.is_recorded(succeeded.id)
    assert json.loads(history.path.read_text())["recorded_jobs"] == sorted(
        job.id for job in [succeeded, *failed]
    )


def test_a_corrupt_history_is_moved_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text("{truncated")
    history = History.load(path)
    assert history.records == [] and history.queue == []
    assert (tmp_path / "history.json.corrupt").read_text() == "{truncated"


def _record_in_child(path: str, index: int) -> None:
    job = make_job(job_id=f"job-{index}", result="failed", error="e", started=NOW + index * MINUTE)
    with History.locked(Path(path), keep=100) as history:
        history.record_finished(job)


def test_locked_updates_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_in_child, args=(str(path), i)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert len(History.load(path, keep=100).records) == 8


def test_an_upload_job_marks_the_build_uploaded(history: History, ops_layout) -> None:
    build = finished_build(ops_layout)
    history.record_finished(build)
    assert history.uploaded_sha256s() == set()
    upload = make_job(
        SP2,
        kind="upload",
        result="succeeded",
        image=build.image,
        sha256=build.sha256,
        started=NOW + 30 * MINUTE,
    )
    history.record_finished(upload)
    assert history.uploaded_sha256s() == {build.sha256}
    assert history.find(build.id).uploaded is True  # type: ignore[union-attr]
    last = history.last_uploads[f"{SP2}/x86_64"]
    assert last.sha256 == build.sha256
    assert last.packages_digest == package_list_digest(["a-1", "b-1"])
    # The inventory shows it uploaded through the history too.
    image = list_local_images(ops_layout, uploaded_sha256s=history.uploaded_sha256s())[0]
    assert image.uploaded is True


def test_forget_upload_after_a_delete_from_maas(history: History, ops_layout) -> None:
    build = finished_build(ops_layout, uploaded=True)
    history.record_finished(build)
    history.forget_upload(SP2, "x86_64")
    assert history.last_uploads == {}
    assert history.uploaded_sha256s() == set()


# ---- queue -----------------------------------------------------------------------------------


def test_queue_holds_configured_releases_without_an_image_in_config_order(
    history: History, ops_layout
) -> None:
    make_stored_image(ops_layout, SP4)
    share = ["20.03-LTS-SP4", SP4, SP2]
    queue = history.sync_queue(share, "x86_64", list_local_images(ops_layout), DIGEST, now=NOW)
    assert [(q.release, q.reason) for q in queue] == [
        ("20.03-LTS-SP4", "missing"),
        (SP2, "missing"),
    ]
    # Syncing again adds nothing twice.
    again = history.sync_queue(share, "x86_64", list_local_images(ops_layout), DIGEST)
    assert again == queue


def test_next_build_is_one_at_a_time(history: History) -> None:
    history.sync_queue([SP4, SP2], "x86_64", [], DIGEST, now=NOW)
    running = make_job("20.03-LTS-SP4")
    assert history.next_build([running]) is None
    upload_running = make_job(kind="upload", phase="upload")
    assert history.next_build([upload_running]) is None
    first = history.next_build([make_job(result="succeeded")])
    assert first is not None and first.release == SP4
    history.mark_started(first, "build-1")
    # Started but not finished: nothing else starts while its job runs.
    assert history.next_build([make_job(SP4, job_id="build-1")]) is None
    # Without a running job, the next not-started entry comes.
    second = history.next_build([])
    assert second is not None and second.release == SP2


def test_finished_queue_build_leaves_the_queue(history: History, ops_layout) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    job = finished_build(ops_layout, started=NOW + MINUTE)
    history.mark_started(item, job.id)
    record = history.record_finished(job)
    assert record is not None and record.trigger == "missing"
    assert history.queue == []
    # The image exists now, so a later sync does not queue it again.
    assert history.sync_queue([SP2], "x86_64", list_local_images(ops_layout), DIGEST) == []


def test_failed_queue_build_is_held_not_retried_every_hook(history: History, ops_layout) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    job = finished_build(ops_layout, result="failed", error="install failed: boom (log: /l)")
    history.mark_started(item, job.id)
    history.record_finished(job, now=NOW)
    assert history.queue == []
    held = history.held[f"{SP2}/x86_64"]
    assert held.reason == "install failed: boom (log: /l)"
    assert held.job_id == job.id
    # The next hooks do not re-queue it...
    assert history.sync_queue([SP2], "x86_64", [], DIGEST) == []
    # ...until the build settings change.
    changed = settings_digest(Settings(extra_packages=("vim-enhanced",)))
    assert [q.release for q in history.sync_queue([SP2], "x86_64", [], changed)] == [SP2]
    assert history.held == {}


def test_cancelled_queue_build_is_held_too(history: History) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    history.mark_started(item, "build-x")
    history.record_finished(make_job(job_id="build-x", result="cancelled"))
    assert history.next_build([]) is None
    assert f"{SP2}/x86_64" in history.held


def test_a_housekeeping_setting_change_does_not_lift_holds(history: History) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    history.hold(item, "could not start: disk full")
    other = settings_digest(Settings(auto_upload=False, keep_images=5, rebuild_schedule="daily"))
    assert other == DIGEST
    assert history.sync_queue([SP2], "x86_64", [], other) == []


def test_a_users_build_satisfies_a_queued_entry(history: History, ops_layout) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    user_build = finished_build(ops_layout, started=NOW + MINUTE)
    record = history.record_finished(user_build)
    assert record is not None and record.trigger == "user"
    assert history.queue == []


def test_a_users_failed_build_does_not_remove_or_hold_the_entry(history: History) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    history.record_finished(make_job(result="failed", error="x", started=NOW + MINUTE))
    assert [q.release for q in history.queue] == [SP2]
    assert history.held == {}


def test_releases_leaving_the_share_leave_the_queue_unless_started(history: History) -> None:
    history.sync_queue([SP4, SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None and item.release == SP4
    history.mark_started(item, "build-sp4")
    queue = history.sync_queue([], "x86_64", [], DIGEST)
    assert [(q.release, q.job_id) for q in queue] == [(SP4, "build-sp4")]


def test_a_vanished_job_does_not_block_the_queue(history: History) -> None:
    history.sync_queue([SP4, SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    history.mark_started(item, "build-gone")
    history.record_jobs([])
    assert [q.release for q in history.queue] == [SP2]
    assert "vanished" in history.held[f"{SP4}/x86_64"].reason


def test_start_failure_is_held_with_its_reason(history: History) -> None:
    history.sync_queue([SP2], "x86_64", [], DIGEST, now=NOW)
    item = history.next_build([])
    assert item is not None
    history.hold(item, "KVM unavailable")
    assert history.next_build([]) is None
    assert history.held[f"{SP2}/x86_64"].reason == "KVM unavailable"
    history.release_hold(SP2, "x86_64")
    assert history.sync_queue([SP2], "x86_64", [], DIGEST)[0].release == SP2


def test_scheduled_rebuild_queues_the_share_forced_with_updates(history: History) -> None:
    history.sync_queue([SP4], "x86_64", [], DIGEST, now=NOW)  # SP4 missing
    history.held[f"{SP2}/x86_64"] = history.held.get(f"{SP2}/x86_64") or _held(SP2)
    queue = history.request_rebuild([SP4, SP2], "x86_64", now=NOW)
    assert [(q.release, q.reason) for q in queue] == [(SP4, "schedule"), (SP2, "schedule")]
    assert history.held == {}
    item = queue[1]
    assert item.force is True
    settings = item.job_settings(Settings(include_updates=False, extra_packages=("tmux",)))
    assert settings.include_updates is True
    assert settings.extra_packages == ("tmux",)
    missing = QueuedBuild(SP2, "x86_64", "missing", "t")
    assert missing.force is False
    assert missing.job_settings(Settings(include_updates=False)).include_updates is False
    # Asking twice queues nothing twice.
    assert len(history.request_rebuild([SP4, SP2], "x86_64")) == 2


def _held(release: str):
    from openeuler_image_builder.unit.history import HeldBuild

    return HeldBuild(release, "x86_64", "earlier failure", "t")


# ---- upload decision -------------------------------------------------------------------------


def _queue_build(history: History, layout, packages, started, reason="schedule"):
    if reason == "schedule":
        history.request_rebuild([SP2], "x86_64", now=started - MINUTE)
    else:
        history.sync_queue([SP2], "x86_64", [], DIGEST, now=started - MINUTE)
    item = history.next_build([])
    assert item is not None
    job = finished_build(layout, packages=packages, started=started)
    history.mark_started(item, job.id)
    record = history.record_finished(job)
    assert record is not None
    return record, job


def _upload(history: History, job, when) -> None:
    history.record_finished(
        make_job(
            SP2,
            kind="upload",
            result="succeeded",
            image=job.image,
            sha256=job.sha256,
            started=when,
        )
    )


def test_first_queue_build_is_uploaded(history: History, ops_layout) -> None:
    record, _ = _queue_build(history, ops_layout, ("a-1",), NOW, reason="missing")
    decision = history.upload_decision(record, auto_upload=True, maas_configured=True)
    assert decision.upload is True


def test_rebuild_with_the_same_packages_is_not_uploaded_again(
    history: History, ops_layout
) -> None:
    first, first_job = _queue_build(history, ops_layout, ("a-1", "b-1"), NOW, reason="missing")
    _upload(history, first_job, NOW + 30 * MINUTE)
    rebuild, _ = _queue_build(history, ops_layout, ("b-1", "a-1"), NOW + 7 * 24 * 60 * MINUTE)
    assert rebuild.sha256 != first.sha256  # a new tarball...
    decision = history.upload_decision(rebuild, auto_upload=True, maas_configured=True)
    assert decision.upload is False  # ...with the same package list
    assert "package list unchanged" in decision.reason
    assert first.sha256[:12] in decision.reason  # type: ignore[index]


def test_rebuild_with_updated_packages_is_uploaded(history: History, ops_layout) -> None:
    _, first_job = _queue_build(history, ops_layout, ("a-1", "b-1"), NOW, reason="missing")
    _upload(history, first_job, NOW + 30 * MINUTE)
    rebuild, _ = _queue_build(history, ops_layout, ("a-1", "b-2"), NOW + 7 * 24 * 60 * MINUTE)
    decision = history.upload_decision(rebuild, auto_upload=True, maas_configured=True)
    assert decision.upload is True


def test_no_upload_when_off_unconfigured_failed_or_user_started(
    history: History, ops_layout
) -> None:
    record, _ = _queue_build(history, ops_layout, ("a-1",), NOW)
    off = history.upload_decision(record, auto_upload=False, maas_configured=True)
    assert not off.upload and "upload-image release=24.03-LTS-SP2" in off.reason
    no_maas = history.upload_decision(record, auto_upload=True, maas_configured=False)
    assert not no_maas.upload and "MAAS is not configured" in no_maas.reason
    user = history.record_finished(finished_build(ops_layout, started=NOW + 60 * MINUTE))
    assert user is not None
    assert not history.upload_decision(user, auto_upload=True, maas_configured=True).upload
    failed = history.record_finished(
        finished_build(ops_layout, result="failed", started=NOW + 90 * MINUTE, error="e")
    )
    assert failed is not None
    assert not history.upload_decision(failed, auto_upload=True, maas_configured=True).upload


def test_same_package_list_compares_manifests() -> None:
    assert same_package_list({"packages": ["a", "b"]}, {"packages": ["b", "a"]})
    assert not same_package_list({"packages": ["a"]}, {"packages": ["a", "b"]})
    # Without package lists: never equal (when in doubt, upload).
    assert not same_package_list({}, {})


def test_history_file_is_plain_json(history: History, ops_layout) -> None:
    history.record_finished(finished_build(ops_layout))
    history.save()
    data = json.loads(history.path.read_text())
    assert data["schema"] == 1
    assert data["records"][0]["release"] == SP2
    assert os.stat(history.path).st_size > 0
