"""Retention: newest keep-images per release x arch, ISOs of unconfigured releases, old jobs'
files; never anything a build or upload is using, nor a job the history has not recorded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from openeuler_image_builder.core.paths import StateLayout
from openeuler_image_builder.pipeline import images, locks
from openeuler_image_builder.unit import history, jobs, retention

R1, R2 = "24.03-LTS-SP3", "22.03-LTS-SP4"


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.ensure()
    return layout


def stored(
    layout: StateLayout, release: str, arch: str, stamp: str, *, finished: bool = True
) -> Path:
    directory = images.store_dir(layout, release, arch) / stamp
    directory.mkdir(parents=True)
    (directory / images.tarball_name(release, arch)).write_bytes(b"t")
    if finished:
        (directory / images.manifest_name(release, arch)).write_text(
            json.dumps({"release": release, "arch": arch, "sha256": "0" * 64, "size": 1})
        )
    return directory


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def names(paths: list[Path]) -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for p in paths)


def test_keeps_the_newest_per_release_and_arch(layout: StateLayout) -> None:
    for stamp in ("20260101T000000Z", "20260201T000000Z", "20260301T000000Z"):
        stored(layout, R1, "x86_64", stamp)
    stored(layout, R1, "aarch64", "20260101T000000Z")
    stored(layout, R2, "x86_64", "20250101T000000Z")
    removed = retention.prune_images(layout, keep=2)
    assert names(removed) == ["openeuler-24.03-LTS-SP3-x86_64/20260101T000000Z"]
    assert [
        i.directory.name for i in images.list_stored_images(layout, release=R1, arch="x86_64")
    ] == [
        "20260301T000000Z",
        "20260201T000000Z",
    ]
    assert len(images.list_stored_images(layout)) == 4
    assert names(retention.prune_images(layout, keep=1)) == [
        "openeuler-24.03-LTS-SP3-x86_64/20260201T000000Z"
    ]


def test_an_image_being_uploaded_is_kept(layout: StateLayout) -> None:
    old = stored(layout, R1, "x86_64", "20260101T000000Z")
    stored(layout, R1, "x86_64", "20260201T000000Z")
    with images.hold_image(old):
        assert retention.prune_images(layout, keep=1) == []
        assert old.exists()
    assert retention.prune_images(layout, keep=1) == [old]


def test_an_image_named_by_a_running_job_is_kept(layout: StateLayout) -> None:
    old = stored(layout, R1, "x86_64", "20260101T000000Z")
    stored(layout, R1, "x86_64", "20260201T000000Z")
    path = jobs.job_state_path(layout, "upload-1")
    jobs.write_job_state(
        path,
        jobs.JobState(
            id="upload-1",
            kind="upload",
            release=R1,
            arch="x86_64",
            started=jobs.iso_time(),
            image=str(old / images.tarball_name(R1, "x86_64")),
            pid=os.getpid(),
            pid_start=jobs.process_start_time(os.getpid()),
        ),
    )
    assert retention.prune_images(layout, keep=1) == []
    jobs.end_job(path, "succeeded")
    assert retention.prune_images(layout, keep=1) == [old]


def test_leftovers_of_failed_builds_go_but_not_a_build_in_progress(layout: StateLayout) -> None:
    stored(layout, R1, "x86_64", "20260301T000000Z")
    crashed = stored(layout, R1, "x86_64", "20260201T000000Z", finished=False)
    young = stored(layout, R1, "x86_64", "20260401T000000Z", finished=False)
    age(crashed, 3600)
    building = stored(layout, R2, "x86_64", "20260101T000000Z", finished=False)
    age(building, 3600)
    with locks.build_lock(layout, R2, "x86_64"):
        removed = retention.prune_images(layout, keep=5)
    assert removed == [crashed]
    assert young.exists() and building.exists()


def iso_files(layout: StateLayout, release: str, arch: str = "x86_64") -> list[Path]:
    name = f"openEuler-{release}-{arch}-dvd.iso"
    paths = [
        layout.iso_cache / name,
        layout.iso_cache / f"{name}.sha256",
        layout.iso_cache / f"{name}.partial",
    ]
    for path in paths:
        path.write_bytes(b"x")
    return paths


def test_prunes_isos_of_releases_no_longer_configured(layout: StateLayout) -> None:
    keep = iso_files(layout, R1)
    drop = iso_files(layout, R2) + iso_files(layout, R2, "aarch64")
    unrelated = layout.iso_cache / "notes.txt"
    unrelated.write_text("mine")
    removed = retention.prune_iso_cache(layout, ["24.03-LTS-SP3"])
    assert sorted(removed) == sorted(drop)
    assert all(path.exists() for path in keep) and unrelated.exists()


def test_aliases_name_configured_releases(layout: StateLayout) -> None:
    iso_files(layout, "22.03-LTS-SP4")
    assert retention.prune_iso_cache(layout, ["22.03"]) == []


def test_iso_of_a_release_being_built_is_kept(layout: StateLayout) -> None:
    files = iso_files(layout, R2)
    with locks.build_lock(layout, R2, "aarch64"):
        assert retention.prune_iso_cache(layout, []) == []
    jobs.write_job_state(
        jobs.job_state_path(layout, "build-x"),
        jobs.JobState(
            id="build-x",
            kind="build",
            release=R2,
            arch="x86_64",
            started=jobs.iso_time(),
            pid=os.getpid(),
            pid_start=jobs.process_start_time(os.getpid()),
        ),
    )
    assert retention.prune_iso_cache(layout, []) == []
    jobs.end_job(jobs.job_state_path(layout, "build-x"), "failed", error="x")
    assert sorted(retention.prune_iso_cache(layout, [])) == sorted(files)


def finished_job(
    layout: StateLayout,
    release: str,
    day: int,
    *,
    arch: str = "x86_64",
    kind: str = "build",
    result: str = "succeeded",
) -> str:
    """A finished job's files as a job leaves them: state, .env, job/Packer/serial logs."""
    job_id = f"{kind}-{release}-{arch}-202601{day:02d}T000000Z"
    for suffix in (".log", ".packer.log", ".packer.log.ui", ".serial.log"):
        (layout.logs / f"{job_id}{suffix}").write_text("log\n")
    state = jobs.job_state_path(layout, job_id)
    state.with_suffix(".env").write_text('PYTHONPATH="/x"\n')
    jobs.write_job_state(
        state,
        jobs.JobState(
            id=job_id,
            kind=kind,  # type: ignore[arg-type]
            release=release,
            arch=arch,
            started=f"2026-01-{day:02d}T00:00:00Z",
            finished=f"2026-01-{day:02d}T01:00:00Z",
            result=result,  # type: ignore[arg-type]
            log_path=str(layout.logs / f"{job_id}.log"),
        ),
    )
    return job_id


def files_of(layout: StateLayout) -> set[str]:
    return {p.name for p in layout.jobs.iterdir()} | {p.name for p in layout.logs.iterdir()}


def test_old_jobs_lose_state_env_and_logs_keeping_the_newest_per_release_and_arch(
    layout: StateLayout,
) -> None:
    old = [finished_job(layout, R1, day) for day in (1, 2, 3)]
    newest = [finished_job(layout, R1, day, kind="upload") for day in (4, 5)]
    other = [finished_job(layout, R2, 1), finished_job(layout, R1, 1, arch="aarch64")]
    removed = retention.prune_jobs(layout, keep=2)
    gone = {old[0], old[1], old[2]}
    assert {p.name for p in removed} == {
        f"{job_id}{suffix}"
        for job_id in gone
        for suffix in (".json", ".env", ".log", ".packer.log", ".packer.log.ui", ".serial.log")
    }
    assert [job.id for job in jobs.list_jobs(layout)] == [
        newest[1],
        newest[0],
        *sorted(other, reverse=True),
    ]
    assert not any(job_id in name for name in files_of(layout) for job_id in gone)
    assert retention.prune_jobs(layout, keep=2) == []


def test_running_jobs_and_jobs_not_recorded_yet_are_kept(layout: StateLayout) -> None:
    first, second, third = (finished_job(layout, R1, day) for day in (1, 2, 3))
    running = jobs.JobState(
        id=f"build-{R1}-x86_64-20260104T000000Z",
        kind="build",
        release=R1,
        arch="x86_64",
        started="2026-01-04T00:00:00Z",
        log_path=str(layout.logs / "running.log"),
    )
    listed = [running, *jobs.list_jobs(layout)]
    removed = retention.prune_jobs(
        layout, keep=1, recorded=lambda job_id: job_id != first, jobs_listed=listed
    )
    assert {p.name for p in removed if p.suffix == ".json"} == {f"{second}.json"}
    assert {job.id for job in jobs.list_jobs(layout)} == {first, third}


def test_the_history_file_tells_which_jobs_were_recorded(layout: StateLayout) -> None:
    first, second, _ = (finished_job(layout, R1, day) for day in (1, 2, 3))
    with history.History.locked(history.History.path_in(layout.root)) as records:
        records.record_jobs([job for job in jobs.list_jobs(layout) if job.id != first])
    removed = retention.prune_jobs(layout, keep=1)
    assert {p.name for p in removed if p.suffix == ".json"} == {f"{second}.json"}


def test_logs_of_foreground_builds_are_kept_per_release_and_arch(layout: StateLayout) -> None:
    for day in range(1, 5):
        for suffix in (".packer.log", ".packer.log.ui", ".serial.log"):
            (layout.logs / f"build-{R1}-x86_64-202601{day:02d}T000000Z{suffix}").write_text("x")
    (layout.logs / f"build-{R2}-x86_64-20260101T000000Z.packer.log").write_text("x")
    (layout.logs / "notes.log").write_text("not ours")
    removed = retention.prune_jobs(layout, keep=2)
    assert sorted(p.name for p in removed) == [
        f"build-{R1}-x86_64-202601{day:02d}T000000Z{suffix}"
        for day in (1, 2)
        for suffix in (".packer.log", ".packer.log.ui", ".serial.log")
    ]
    assert "notes.log" in files_of(layout)
    with locks.build_lock(layout, R2, "x86_64"):  # a foreground build of R2 runs
        (layout.logs / f"build-{R2}-x86_64-20260102T000000Z.packer.log").write_text("x")
        (layout.logs / f"build-{R2}-x86_64-20260103T000000Z.packer.log").write_text("x")
        removed = retention.prune_jobs(layout, keep=1)
        assert [p.name for p in removed if R2 in p.name] == []
    assert sorted(p.name for p in retention.prune_jobs(layout, keep=1)) == [
        f"build-{R2}-x86_64-{stamp}.packer.log"
        for stamp in ("20260101T000000Z", "20260102T000000Z")
    ]


def test_config_change_prunes_unconfigured_isos_only_when_releases_are_set(
    layout: StateLayout,
) -> None:
    iso = layout.iso_cache / f"openEuler-{R2}-x86_64-dvd.iso"
    iso.write_bytes(b"iso")
    for stamp in ("20260101T000000Z", "20260201T000000Z"):
        stored(layout, R1, "x86_64", stamp)
    removed = retention.prune_after_config(layout, [], keep_images=1)
    assert names(removed) == ["openeuler-24.03-LTS-SP3-x86_64/20260101T000000Z"]
    assert iso.exists()  # no releases configured: the ISO may serve build-image
    assert retention.prune_after_config(layout, [R1], keep_images=1) == [iso]


def test_every_log_suffix_names_a_job_log() -> None:
    for suffix in retention.LOG_SUFFIXES:
        match = retention.JOB_LOG_NAME.match(f"build-{R1}-x86_64-20260101T000000Z-2{suffix}")
        assert match is not None, suffix
        assert match.group("id") == f"build-{R1}-x86_64-20260101T000000Z-2"
        assert (match.group("release"), match.group("arch")) == (R1, "x86_64")
    assert retention.JOB_LOG_NAME.match(f"build-{R1}-x86_64-20260101T000000Z.json") is None


def test_config_change_lists_the_jobs_once(
    layout: StateLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[StateLayout] = []
    real = jobs.list_jobs

    def counted(layout: StateLayout, **kwargs: object) -> list[jobs.JobState]:
        calls.append(layout)
        return real(layout)

    monkeypatch.setattr(jobs, "list_jobs", counted)
    retention.prune_after_config(layout, [R1], keep_images=1)
    assert calls == [layout]


def test_keep_must_be_positive(layout: StateLayout) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retention.prune_images(layout, keep=0)
    with pytest.raises(ValueError, match="at least 1"):
        retention.prune_jobs(layout, keep=0)
