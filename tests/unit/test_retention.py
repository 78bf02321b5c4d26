"""Retention: newest keep-images per release x arch, ISOs of unconfigured releases, job records;
never anything a build or upload is using.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from openeuler_image_builder import images, jobs, locks, retention
from openeuler_image_builder.paths import StateLayout

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


def test_old_job_records_and_their_logs_are_forgotten(layout: StateLayout) -> None:
    for number in range(5):
        job_id = f"build-{number}"
        log = layout.logs / f"{job_id}.log"
        log.write_text("log")
        (layout.logs / f"{job_id}.packer.log").write_text("packer")
        jobs.write_job_state(
            jobs.job_state_path(layout, job_id),
            jobs.JobState(
                id=job_id,
                kind="build",
                release=R1,
                arch="x86_64",
                started=f"2026-01-0{number + 1}T00:00:00Z",
                result="failed",
                log_path=str(log),
            ),
        )
    removed = retention.prune_job_records(layout, keep=3)
    assert names(removed) == [
        "jobs/build-0.json",
        "jobs/build-1.json",
        "logs/build-0.log",
        "logs/build-0.packer.log",
        "logs/build-1.log",
        "logs/build-1.packer.log",
    ]
    assert [job.id for job in jobs.list_jobs(layout)] == ["build-4", "build-3", "build-2"]


def test_keep_must_be_positive(layout: StateLayout) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retention.prune_images(layout, keep=0)
